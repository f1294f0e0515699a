"""Every family of keras.applications image classifiers, converted by from_keras, at its smallest
valid input: logits (classifier_activation=None) or pooled features within 1e-5 relative of Keras
(torch backend), with every weight random and non-trivial and BatchNorm statistics from a real
batch, after checking that another input moves Keras' output far more than that.

Where the error exceeds 1e-5 it must stay within twice Keras' own float32 noise floor (how far its
output moves when the input moves by one ulp), which the deepest models reach by rounding alone.
One model per family runs here, each with one of the three tops (classifier, avg or max pooling);
``scripts/keras_applications.py`` runs every model with every top and records the errors in
docs/keras_applications.md.
"""
import numpy as np
import pytest
import torch
from torch import nn

import torchblocks as tb
from keras_oracle import (
    application_case, assert_rel_close, calibrate_bn, keras, keras_nchw, noise_floor, random_weights, rel_error,
    run_torch,
)

load_keras_weights = tb.interop.keras.load_keras_weights

RTOL = 1e-5
XCEPTION_RTOL = 1e-4

# (model, top): the smallest model of each family, the three tops spread over the families.
FAMILIES = [
    ("VGG16", "top"), ("ResNet50", "avg"), ("ResNet50V2", "max"), ("InceptionV3", "top"),
    ("InceptionResNetV2", "avg"), ("Xception", "max"), ("MobileNet", "top"), ("MobileNetV2", "avg"),
    ("MobileNetV3Small", "top"), ("DenseNet121", "max"), ("NASNetLarge", "avg"), ("EfficientNetB0", "top"),
    ("EfficientNetV2B0", "max"), ("ConvNeXtTiny", "top"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, top", FAMILIES)
def test_application_matches_keras(name, top):
    rng = np.random.default_rng(0)
    model, x, expected = application_case(name, top, rng)
    module = tb.interop.keras.from_keras(model)
    # The oracle is sensitive: the first half of the batch moves Keras' output far from the second's.
    assert rel_error(expected[:16], expected[16:]) > 1e-2
    error = rel_error(run_torch(module, x), expected)
    if error > RTOL:
        # The deepest models (NASNetLarge: 1041 layers) reach 1e-5 by float32 rounding alone: Keras'
        # own output moves that much when its input moves by one ulp. Exact means within that noise.
        floor = noise_floor(model, x, rng)
        assert error <= 2 * floor, f"error {error:.2e} > 1e-5 and > twice Keras' own noise floor {floor:.2e}"


# ------------------------------------------------ keras.applications.Xception into tb.models.xception


@pytest.fixture(scope="module")
def keras_xceptions():
    """Keras Xception with BN statistics from a real batch: the classifier (logits) at its smallest
    input, 71×71, and the pooled feature extractor for any size, sharing their weights."""
    apps = keras().applications
    features = apps.Xception(weights=None, include_top=False, pooling="avg", input_shape=(None, None, 3))
    rng = np.random.default_rng(7)
    calibrate_bn(features, rng.uniform(-1, 1, size=(4, 75, 77, 3)).astype(np.float32))
    classifier = apps.Xception(weights=None, classifier_activation=None, input_shape=(71, 71, 3))
    weighted = [l for l in classifier.layers if l.weights]
    for source, target in zip([l for l in features.layers if l.weights], weighted):
        target.set_weights(source.get_weights())
    random_weights(weighted[-1], rng)
    return classifier, features


def _check_xception(keras_model, module: nn.Module, x: np.ndarray) -> None:
    expected = keras_nchw(keras_model, x, training=False)
    # The oracle is sensitive: the two images' outputs differ by far more than the tolerance.
    assert rel_error(expected[0], expected[1]) > 100 * XCEPTION_RTOL
    assert_rel_close(run_torch(module.eval(), x), expected, XCEPTION_RTOL)


@pytest.mark.slow
def test_xception_matches_keras_classifier(keras_xceptions):
    classifier = keras_xceptions[0]
    module = tb.models.xception()
    result = load_keras_weights(module, classifier)
    assert len(result.loaded) == len([l for l in classifier.layers if l.weights]) == 81
    bns = [m.bn for m in module.modules() if isinstance(m, tb.BatchNorm)]
    assert len(bns) == 40 and all(bn.eps == pytest.approx(1e-3) and bn.momentum == pytest.approx(0.01) for bn in bns)
    x = np.random.default_rng(8).uniform(-1, 1, size=(2, 3, 71, 71)).astype(np.float32)
    _check_xception(classifier, module, x)


@pytest.mark.slow
def test_xception_odd_size_and_weights_h5(keras_xceptions, tmp_path):
    """73×75 pooled features; the .weights.h5 file (no configs) loads the same tensors."""
    features = keras_xceptions[1]
    module = tb.models.xception(include_top=False, pooling="avg")
    load_keras_weights(module, features)
    x = np.random.default_rng(9).uniform(-1, 1, size=(2, 3, 73, 75)).astype(np.float32)
    _check_xception(features, module, x)
    path = str(tmp_path / "xception.weights.h5")
    features.save_weights(path)
    from_file = tb.models.xception(include_top=False, pooling="avg")
    load_keras_weights(from_file, path)
    expected = module.state_dict()
    for key, value in from_file.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, expected[key]), key

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

import torchblocks as tb
from keras_oracle import application_case, noise_floor, rel_error, run_torch

RTOL = 1e-5

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

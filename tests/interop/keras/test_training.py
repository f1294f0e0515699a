"""Training parity: a converted module trains like its Keras model.

From the same weights, a few SGD steps on the same batches in Keras (``compile(SGD(lr),
"categorical_crossentropy")`` and ``train_on_batch``, BatchNorm in training mode) and in the
converted module (``torch.optim.SGD``, Keras' categorical cross-entropy on the same softmax
outputs) must leave equal trainable weights (1e-5 relative) and equal BatchNorm moving means.
The moving variances differ by design: torch updates ``running_var`` with the unbiased batch
variance (n / (n - 1) times Keras' biased one, n = N·H·W values per channel); that relation is
checked exactly rather than hidden behind a tolerance.
"""
import numpy as np
import pytest
import torch

import torchblocks as tb
from keras_oracle import book_separable_model, images, keras, nchw_to_nhwc, randomize

kinterop = tb.interop.keras
RTOL = 1e-5
STEPS = 3
BATCH = 8
LEARNING_RATE = 0.05
KERAS_EPSILON = 1e-7  # keras.config.epsilon(): Keras clips probabilities to [eps, 1 - eps]


def _book_model():
    model = book_separable_model(32, 32)
    return model, (3, 32, 32), 10


def _residual_bn_model():
    """Conv-BN-ReLU, then a strided residual block with BN and a 1×1 projection shortcut. BN
    momentum 0.5 (Keras) makes every step's batch statistics weigh in the moving averages."""
    L = keras().layers
    inp = keras().Input((12, 12, 3))
    x = L.Activation("relu")(L.BatchNormalization(momentum=0.5)(L.Conv2D(8, 3, padding="same")(inp)))
    y = L.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    y = L.BatchNormalization(momentum=0.5)(y)
    x = L.ReLU()(L.add([y, L.Conv2D(16, 1, strides=2, name="projection")(x)]))
    out = L.Dense(4, activation="softmax")(L.GlobalAveragePooling2D()(x))
    return keras().Model(inp, out), (3, 12, 12), 4


def categorical_crossentropy(probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Keras' ``categorical_crossentropy`` on probabilities: renormalised, clipped, batch mean."""
    p = probabilities / probabilities.sum(dim=1, keepdim=True)
    p = p.clamp(KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    return -(targets * p.log()).sum(dim=1).mean()


def _train_both(rng, make_model):
    """(state dict before, Keras weights after in torch layout, torch state after, losses)."""
    model, shape, classes = make_model()
    randomize(model, rng)
    last = model.layers[-1]
    last.kernel.assign(last.kernel * 0.1)  # a softmax out of saturation: real gradients
    module = kinterop.from_keras(model).train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    model.compile(optimizer=keras().optimizers.SGD(LEARNING_RATE), loss="categorical_crossentropy")
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=LEARNING_RATE)
    losses = []
    for _ in range(STEPS):
        x = images(rng, BATCH, *shape)
        y = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, BATCH)]
        keras_loss = float(model.train_on_batch(nchw_to_nhwc(x), y))
        optimizer.zero_grad()
        loss = categorical_crossentropy(module(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        optimizer.step()
        losses.append((keras_loss, loss.item()))
    return before, kinterop.from_keras(model).state_dict(), module.state_dict(), losses, module


MODELS = [_book_model, _residual_bn_model]


@pytest.mark.parametrize("make_model", MODELS)
def test_sgd_steps_leave_equal_weights(rng, make_model):
    before, keras_after, torch_after, losses, module = _train_both(rng, make_model)
    np.testing.assert_allclose([t for _, t in losses], [k for k, _ in losses], rtol=RTOL)
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    assert trainable
    moved = 0.0
    for name in trainable:
        expected, actual, start = keras_after[name], torch_after[name], before[name]
        scale = float(expected.abs().max())
        assert float((actual - expected).abs().max()) <= RTOL * scale, name
        step_keras, step_torch = expected - start, actual - start
        # The updates themselves agree, to 1e-3 of their size (plus float32 rounding of the weight).
        allowed = 1e-3 * float(step_keras.abs().max()) + 1e-6 * scale
        assert float((step_torch - step_keras).abs().max()) <= allowed, name
        moved = max(moved, float(step_keras.abs().max()) / scale)
    assert moved > 100 * RTOL  # the weights moved far more than the tolerance: the check can fail


def test_batchnorm_moving_statistics(rng):
    """Moving means are equal; moving variances obey torch = n/(n-1) · Keras on the part the
    batches contributed (the start value's share, momentum^steps · v0, is the same in both)."""
    before, keras_after, torch_after, _, module = _train_both(rng, _residual_bn_model)
    # Values per channel: the batch times each BN input's spatial size (12×12, then 6×6).
    counts = {"batch_normalization": BATCH * 12 * 12, "batch_normalization_1": BATCH * 6 * 6}
    norms = [name for name, m in module.named_children() if isinstance(m, tb.BatchNorm)]
    assert len(norms) == 2
    for name, n in zip(norms, counts.values()):
        momentum = module.get_submodule(name).bn.momentum  # torch's: 1 - Keras' 0.5
        mean, var = f"{name}.bn.running_mean", f"{name}.bn.running_var"
        torch.testing.assert_close(torch_after[mean], keras_after[mean], rtol=RTOL, atol=0)
        kept = (1 - momentum) ** STEPS * before[var]
        keras_part, torch_part = keras_after[var] - kept, torch_after[var] - kept
        torch.testing.assert_close(torch_part, keras_part * n / (n - 1), rtol=RTOL, atol=0)
        # The correction (1/(n-1) relative) is far above the tolerance: plain equality fails.
        assert 1 / (n - 1) > 10 * RTOL
        assert not torch.allclose(torch_after[var], keras_after[var], rtol=RTOL, atol=0)

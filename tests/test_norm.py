"""BatchNorm (axis=1 / axis=-1), ConvBN and DenseBN against Keras 3 BatchNormalization."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import torchblocks as tb
from keras_oracle import (
    assert_rel_close,
    check_scripted,
    copy_batchnorm,
    copy_conv,
    copy_dense,
    keras,
    random_weights,
    rel_error,
    run_keras_nchw,
    run_torch,
    to_numpy,
)

C = 3
# (name, axis, input shape): Keras' BatchNormalization(axis=...) takes the tensor as it is.
LAYOUTS = [
    ("NCHW", 1, (4, C, 5, 6)),
    ("NC", 1, (8, C)),
    ("NHWC", -1, (4, 5, 6, C)),
    ("NLC", -1, (4, 7, C)),
]
# (Keras epsilon, Keras momentum): torch momentum is 1 - Keras momentum.
HYPER = [(1e-3, 0.99), (1e-5, 0.9), (0.1, 0.5)]


def _keras_bn(axis: int, shape, eps: float, momentum: float, rng):
    layer = keras().layers.BatchNormalization(axis=axis, epsilon=eps, momentum=momentum)
    layer.build(shape)
    random_weights(layer, rng)
    return layer


def _values_per_channel(shape, axis: int) -> int:
    return int(np.prod(shape)) // shape[axis]


@pytest.mark.parametrize("eps, momentum", HYPER)
@pytest.mark.parametrize("name, axis, shape", LAYOUTS, ids=[layout[0] for layout in LAYOUTS])
def test_batchnorm_inference_matches_keras(name, axis, shape, eps, momentum, rng):
    x = rng.normal(1.0, 2.0, size=shape).astype(np.float32)
    k_layer = _keras_bn(axis, shape, eps, momentum, rng)
    layer = tb.BatchNorm(C, axis, eps=eps, momentum=1 - momentum).eval()
    copy_batchnorm(k_layer, layer)
    expected = to_numpy(k_layer(x, training=False))
    assert_rel_close(run_torch(layer, x), expected)
    # The oracle is sensitive to the statistics: a shifted running mean misses by far more.
    with torch.no_grad():
        layer.bn.running_mean += 0.1
    assert rel_error(run_torch(layer, x), expected) > 1e-3


@pytest.mark.parametrize("eps, momentum", HYPER)
@pytest.mark.parametrize("name, axis, shape", LAYOUTS, ids=[layout[0] for layout in LAYOUTS])
def test_batchnorm_training_matches_keras(name, axis, shape, eps, momentum, rng):
    x = rng.normal(1.0, 2.0, size=shape).astype(np.float32)
    k_layer = keras().layers.BatchNormalization(axis=axis, epsilon=eps, momentum=momentum)
    k_layer.build(shape)  # fresh statistics: mean 0, variance 1 on both sides
    layer = tb.BatchNorm(C, axis, eps=eps, momentum=1 - momentum).train()
    copy_batchnorm(k_layer, layer)
    expected = to_numpy(k_layer(x, training=True))
    assert_rel_close(run_torch(layer, x), expected)

    k_mean, k_var = to_numpy(k_layer.moving_mean), to_numpy(k_layer.moving_variance)
    # Same update rule for the mean; equal up to float32 rounding of the batch mean.
    np.testing.assert_allclose(layer.bn.running_mean.numpy(), k_mean, rtol=1e-6, atol=1e-7)
    # The variance: torch folds in the unbiased batch variance, Keras the biased one. From the
    # initial 1: torch = m + (1 - m)·var·n/(n - 1), Keras = m + (1 - m)·var (m = Keras momentum).
    n = _values_per_channel(shape, axis)
    torch_from_keras = momentum + (k_var - momentum) * n / (n - 1)
    np.testing.assert_allclose(layer.bn.running_var.numpy(), torch_from_keras, rtol=1e-6)
    assert not np.allclose(layer.bn.running_var.numpy(), k_var, rtol=1e-6)
    assert int(layer.bn.num_batches_tracked) == 1


@pytest.mark.parametrize("axis, shape", [(1, (2, C, 4, 5)), (-1, (2, 4, 5, C))])
def test_sync_batchnorm_conversion_keeps_axis_and_state(axis, shape):
    layer = tb.BatchNorm(C, axis)
    with torch.no_grad():
        layer.bn.weight.uniform_(0.5, 1.5)
        layer.bn.bias.normal_()
        layer.bn.running_mean.normal_()
        layer.bn.running_var.uniform_(0.5, 2.0)
    layer.eval()
    x = torch.randn(shape)
    expected = layer(x)

    converted = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(layer))
    assert isinstance(converted, tb.BatchNorm) and converted.axis == axis
    assert isinstance(converted.bn, nn.SyncBatchNorm)
    converted.eval()
    torch.testing.assert_close(converted(x), expected, rtol=0, atol=0)

    # A converted fresh module loads the original state dict (same keys) and agrees with it.
    fresh = nn.SyncBatchNorm.convert_sync_batchnorm(tb.BatchNorm(C, axis)).eval()
    assert set(fresh.state_dict()) == set(layer.state_dict()) == {
        "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"
    }
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)


def test_sync_batchnorm_converts_inside_conv_bn():
    model = nn.SyncBatchNorm.convert_sync_batchnorm(tb.ConvBN(3, 4, 3))
    assert isinstance(model.bn.bn, nn.SyncBatchNorm)


@pytest.mark.parametrize("axis", [1, -1])
def test_batchnorm_parameter_count_equals_keras(axis):
    k_layer = keras().layers.BatchNormalization(axis=axis)
    k_layer.build((2, 16, 5, 16))
    layer = tb.BatchNorm(16, axis)
    params = sum(p.numel() for p in layer.parameters())
    stats = layer.bn.running_mean.numel() + layer.bn.running_var.numel()
    # Keras counts gamma, beta and both moving statistics; torch keeps the statistics as buffers
    # (plus the scalar num_batches_tracked, which Keras does not have).
    assert params == 2 * 16
    assert params + stats == k_layer.count_params() == 4 * 16


# --- the book's Conv -> BN and Dense -> BN patterns, built in Keras' functional API ------------


@pytest.mark.parametrize("training", [False, True])
def test_conv_bn_matches_keras(training, rng):
    layers = keras().layers
    size, c_in, c_out = (8, 9), 3, 4
    inputs = keras().Input(shape=(*size, c_in))
    x = layers.Conv2D(c_out, 3, activation="relu", padding="same")(inputs)
    outputs = layers.BatchNormalization()(x)
    k_model = keras().Model(inputs, outputs)
    k_conv, k_bn = k_model.layers[1], k_model.layers[2]
    random_weights(k_conv, rng)
    random_weights(k_bn, rng)
    module = tb.ConvBN(c_in, c_out, 3, padding="same", eps=1e-3, momentum=0.01)
    copy_conv(k_conv, module.conv)
    copy_batchnorm(k_bn, module.bn)
    module.train(training)
    data = rng.normal(size=(2, c_in, *size)).astype(np.float32)
    expected = run_keras_nchw(k_model, data, training=training)
    assert_rel_close(run_torch(module, data), expected)
    if training:
        np.testing.assert_allclose(
            module.bn.bn.running_mean.numpy(), to_numpy(k_bn.moving_mean), rtol=1e-6, atol=1e-6
        )


@pytest.mark.parametrize("training", [False, True])
def test_dense_bn_matches_keras(training, rng):
    layers = keras().layers
    inputs = keras().Input(shape=(6,))
    outputs = layers.BatchNormalization()(layers.Dense(5, activation="relu")(inputs))
    k_model = keras().Model(inputs, outputs)
    k_dense, k_bn = k_model.layers[1], k_model.layers[2]
    random_weights(k_dense, rng)
    random_weights(k_bn, rng)
    module = tb.DenseBN(6, 5, eps=1e-3, momentum=0.01).train(training)
    copy_dense(k_dense, module.dense)
    copy_batchnorm(k_bn, module.bn)
    data = rng.normal(size=(16, 6)).astype(np.float32)
    expected = to_numpy(k_model(data, training=training))
    assert_rel_close(run_torch(module, data), expected)


# --- bad input -----------------------------------------------------------------------------------

BAD_BN_ARGS = [
    (dict(axis=2), ValueError, "axis"),
    (dict(axis=0), ValueError, "axis"),
    (dict(axis=True), ValueError, "axis"),
    (dict(num_features=0), ValueError, "num_features"),
    (dict(num_features=3.0), TypeError, "num_features"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(momentum=1.5), ValueError, "momentum"),
    (dict(momentum=-0.1), ValueError, "momentum"),
]


@pytest.mark.parametrize("kwargs, error, name", BAD_BN_ARGS)
def test_batchnorm_rejects_bad_arguments(kwargs, error, name):
    args = dict(num_features=4)
    args.update(kwargs)
    with pytest.raises(error, match=f"`{name}`.*Received"):
        tb.BatchNorm(**args)


def test_batchnorm_forward_errors_name_shapes():
    with pytest.raises(ValueError, match=r"rank >= 2 with 4 channels.*\[4\]"):
        tb.BatchNorm(4)(torch.randn(4))
    with pytest.raises(ValueError, match=r"axis=1\) expects 4 channels in dim 1.*\[2, 3, 5, 5\]"):
        tb.BatchNorm(4)(torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match=r"axis=-1\) expects 4 channels in the last dim.*\[2, 4, 5, 5\]"):
        tb.BatchNorm(4, axis=-1)(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"channels-last.*permute\(0, 3, 1, 2\)"):
        tb.BatchNorm(4)(torch.randn(2, 5, 5, 4))


# --- TorchScript -------------------------------------------------------------------------------

SCRIPTED_NORMS = [
    ("bn-axis1-4d", lambda: tb.BatchNorm(3), (2, 3, 4, 5)),
    ("bn-axis1-2d", lambda: tb.BatchNorm(3), (4, 3)),
    ("bn-axis-1", lambda: tb.BatchNorm(3, axis=-1), (2, 4, 5, 3)),
    ("conv-bn", lambda: tb.ConvBN(3, 4, 3, padding="same"), (2, 3, 6, 7)),
    ("dense-bn", lambda: tb.DenseBN(3, 4), (4, 3)),
]


@pytest.mark.parametrize("make, shape", [c[1:] for c in SCRIPTED_NORMS], ids=[c[0] for c in SCRIPTED_NORMS])
def test_norm_layers_script_and_round_trip(make, shape):
    module = make()
    module(torch.randn(shape) * 3 + 1)  # one training step: non-trivial running statistics
    check_scripted(module, (torch.randn(shape),))


# --- dtypes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("axis, shape", [(1, (2, 3, 4, 4)), (-1, (2, 4, 4, 3)), (1, (5, 3))])
def test_batchnorm_dtype_errors_name_the_layer(axis, shape):
    bn = tb.BatchNorm(3, axis=axis).eval()
    # CPU BatchNorm takes half inputs with float parameters: the output keeps the input's dtype.
    assert bn(torch.randn(shape, dtype=torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(TypeError, match=r"BatchNorm received a torch.float64 input but its parameters are torch.float32 \(torch: mixed dtype"):
        bn(torch.randn(shape, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"BatchNorm received a torch.int64 input.*Cast the input with x.to\(torch.float32\)\.$"):
        bn(torch.ones(shape, dtype=torch.int64))


# --- tb.SyncBatchNorm and tb.convert_sync_batchnorm, one process ----------------------------------
# (the two-process equivalence lives in tests/test_distributed.py)

# (id, axis, input shape, momentum): without a process group SyncBatchNorm is plain BatchNorm.
SYNC_LOCAL = [
    ("NCHW", 1, (4, C, 5, 6), 0.1),
    ("NC-cumulative", 1, (8, C), None),
    ("NHWC", -1, (4, 5, 6, C), 0.3),
]


@pytest.mark.parametrize("axis, shape, momentum", [c[1:] for c in SYNC_LOCAL], ids=[c[0] for c in SYNC_LOCAL])
def test_sync_batchnorm_without_process_group_is_batchnorm_exactly(axis, shape, momentum):
    torch.manual_seed(0)
    plain = tb.BatchNorm(C, axis, momentum=momentum)
    with torch.no_grad():
        plain.bn.weight.uniform_(0.5, 1.5)
        plain.bn.bias.normal_()
    synced = tb.SyncBatchNorm(C, axis, momentum=momentum)
    synced.load_state_dict({key[len("bn."):]: value for key, value in plain.state_dict().items()})
    for step in range(2):
        x = (torch.randn(shape) * 2 + 1).requires_grad_(True)
        x_sync = x.detach().clone().requires_grad_(True)
        out, out_sync = plain(x), synced(x_sync)
        assert torch.equal(out_sync, out)
        weights = torch.randn(shape)
        (out * weights).sum().backward()
        (out_sync * weights).sum().backward()
        assert torch.equal(x_sync.grad, x.grad)
    assert torch.equal(synced.weight.grad, plain.bn.weight.grad)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(synced, name), getattr(plain.bn, name)), name
    plain.eval(), synced.eval()
    x = torch.randn(shape)
    assert torch.equal(synced(x), plain(x))


@pytest.mark.parametrize("axis, shape", [(1, (2, C, 4, 5)), (-1, (2, 4, 5, C))])
def test_sync_batchnorm_scripts_and_round_trips(axis, shape):
    module = tb.SyncBatchNorm(C, axis)
    module(torch.randn(shape) * 3 + 1)
    check_scripted(module, (torch.randn(shape),))


def _bn_zoo() -> nn.Module:
    """Every kind of BatchNorm: tb.BatchNorm on both axes, torch's 1d/2d, inside blocks, frozen,
    in eval mode, with non-default eps/momentum, without running statistics, without bias."""
    model = nn.Module()
    model.conv_bn = tb.ConvBN(3, 4, 3, eps=1e-3, momentum=0.01)
    model.last = tb.BatchNorm(4, axis=-1, momentum=None)
    model.torch2d = nn.BatchNorm2d(4, eps=0.1, momentum=0.5)
    model.torch1d = nn.BatchNorm1d(6, track_running_stats=False)
    model.no_bias = nn.BatchNorm2d(4, bias=False)
    model.frozen = nn.BatchNorm2d(4)
    model.frozen.weight.requires_grad_(False)
    model.frozen.eval()
    model.already = tb.SyncBatchNorm(4)
    return model


def test_convert_sync_batchnorm_converts_every_kind_and_keeps_everything():
    torch.manual_seed(0)
    model = _bn_zoo()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None:
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5)
    before = {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    tensors = {name: (m.weight, m.bias, m.running_mean, m.running_var, m.num_batches_tracked)
               for name, m in before.items()}
    state = copy.deepcopy(model.state_dict())
    already = model.already

    converted = tb.convert_sync_batchnorm(model)
    assert converted is model and model.already is already
    after = {name: m for name, m in converted.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert list(after) == list(before)
    for name, new in after.items():
        old = before[name]
        assert type(new) is tb.SyncBatchNorm and new.axis == 1, name
        # The very same tensors: values, requires_grad and an optimizer's references all kept.
        shared = (new.weight, new.bias, new.running_mean, new.running_var, new.num_batches_tracked)
        assert all(a is b for a, b in zip(shared, tensors[name])), name
        assert (new.eps, new.momentum, new.affine, new.track_running_stats, new.training) == (
            old.eps, old.momentum, old.affine, old.track_running_stats, old.training), name
    assert converted.last.axis == -1 and converted.no_bias.bias is None
    assert not converted.frozen.training and not converted.frozen.weight.requires_grad
    assert converted.state_dict().keys() == state.keys()
    assert all(torch.equal(converted.state_dict()[key], value) for key, value in state.items())


def test_convert_sync_batchnorm_returns_a_converted_root():
    bn = nn.BatchNorm2d(3).eval()
    converted = tb.convert_sync_batchnorm(bn)
    assert type(converted) is tb.SyncBatchNorm and converted.weight is bn.weight and not converted.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_convert_sync_batchnorm_picks_torch_sync_batchnorm_on_cuda():
    model = nn.Sequential(tb.ConvBN(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(2, 2)).cuda()
    model.add_module("cpu_bn", nn.BatchNorm2d(4))
    converted = tb.convert_sync_batchnorm(model)
    assert type(converted[0].bn.bn) is nn.SyncBatchNorm and type(converted[1]) is nn.SyncBatchNorm
    assert type(converted.cpu_bn) is tb.SyncBatchNorm


BAD_SYNC = [
    (lambda: tb.SyncBatchNorm(4, axis=0), ValueError, r"argument `axis`.*Received axis=0"),
    (lambda: tb.SyncBatchNorm(4, eps=-1.0), ValueError, r"argument `eps`.*Received eps=-1\.0"),
    (lambda: tb.SyncBatchNorm(0), ValueError, r"argument `num_features`.*Received num_features=0"),
    (lambda: tb.SyncBatchNorm(4)(torch.randn(2, 3, 5)), ValueError,
     r"SyncBatchNorm\(axis=1\) expects an input of rank >= 2 with 4 channels in dim 1; "
     r"received shape torch\.Size\(\[2, 3, 5\]\)"),
    (lambda: tb.SyncBatchNorm(4, axis=-1)(torch.randn(4)), ValueError, r"rank >= 2 with 4 channels in dim -1"),
    (lambda: tb.convert_sync_batchnorm("model"), TypeError, r"argument `module`\. Expected an nn\.Module"),
    (lambda: tb.convert_sync_batchnorm(nn.LazyBatchNorm2d()), ValueError,
     r"uninitialized lazy BatchNorm \(LazyBatchNorm2d\)"),
]


@pytest.mark.parametrize("call, error, message", BAD_SYNC)
def test_sync_batchnorm_bad_input_is_refused(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_fuse_bn_leaves_a_channels_last_sync_batchnorm_alone():
    """A conv followed by SyncBatchNorm(axis=-1) (a _BatchNorm over the last dim) is not folded:
    fuse_bn keeps the model's eval output exactly, where folding it as axis=1 would miss by ~1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), tb.SyncBatchNorm(4, axis=-1)).eval()
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 5, 4)  # W = 4 = channels: the last dim fits either reading
    fused = tb.fuse_bn(model)
    assert isinstance(fused[1], tb.SyncBatchNorm)
    with torch.no_grad():
        assert torch.equal(fused(x), model(x))

"""Xception: Keras Applications' graph (layer by layer, dataflow included), counts, heads, sizes, errors.

The oracle is ``keras.applications.Xception(weights=None)`` itself (built once, never run): its
weighted layers, their order and configuration, and which layer feeds which. Numeric parity with
Keras weights is tested with the Keras interop.
"""
import operator

import pytest
import torch
import torch.fx
from torch import nn

import torchblocks as tb
from keras_oracle import check_scripted, keras

# torchblocks module type -> Keras layer class name (SeparableConv2d before its Conv2d children).
KINDS = (
    (tb.SeparableConv2d, "SeparableConv2D"),
    (tb.Conv2d, "Conv2D"),
    (tb.BatchNorm, "BatchNormalization"),
    (nn.ReLU, "Activation"),
    (tb.MaxPool2d, "MaxPooling2D"),
    (tb.GlobalAvgPool2d, "GlobalAveragePooling2D"),
    (tb.Dense, "Dense"),
)
LEAVES = tuple(cls for cls, _ in KINDS)

TOP_CASES = [
    # include_top, pooling, output shape at 71×71 (feature map 71 -> 35 -> 33 -> 17 -> 9 -> 5 -> 3)
    (True, None, (2, 7)),
    (False, None, (2, 2048, 3, 3)),
    (False, "avg", (2, 2048)),
    (False, "max", (2, 2048)),
]
SIZES = [71, 100, 150]
BAD_ARGS = [
    (dict(num_classes=0), ValueError, "num_classes"),
    (dict(num_classes=2.5), TypeError, "num_classes"),
    (dict(include_top=False, pooling="mean"), ValueError, "pooling='mean'"),
    (dict(pooling="avg"), ValueError, "include_top=False"),
    (dict(include_top="yes"), TypeError, "include_top"),
]


class LeafTracer(torch.fx.Tracer):
    """fx tracer that keeps torchblocks layers whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAVES) or super().is_leaf_module(m, qualname)


@pytest.fixture(scope="module")
def keras_xception():
    return keras().applications.Xception(weights=None)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tb.models.xception().eval()


@pytest.fixture(scope="module")
def features() -> nn.Module:
    return tb.models.xception(include_top=False).eval()


def _keras_feature_size(n: int) -> int:
    """Keras' arithmetic: 3×3/2 'valid' conv, 3×3 'valid' conv, then four 'same' stride-2 pools."""
    n = (n - 3) // 2 + 1 - 2
    for _ in range(4):
        n = -(-n // 2)
    return n


def _kind(module: nn.Module) -> str:
    return next(name for cls, name in KINDS if isinstance(module, cls))


def _padding(kernel_size: tuple, padding: str) -> str:
    # A 1×1 kernel never pads: 'same' and 'valid' are one layer (Projection says 'valid').
    return "1x1: none" if tuple(kernel_size) == (1, 1) else padding


def _torch_config(m: nn.Module) -> tuple:
    if isinstance(m, tb.SeparableConv2d):
        dw = m.depthwise
        padding = _padding(dw.kernel_size, dw.padding_spec)
        return (m.out_channels, dw.kernel_size, dw.stride, padding, m.pointwise.bias is not None)
    if isinstance(m, tb.Conv2d):
        padding = _padding(m.kernel_size, m.padding_spec)
        return (m.out_channels, m.kernel_size, m.stride, padding, m.bias is not None)
    if isinstance(m, tb.MaxPool2d):
        return (m.kernel_size, m.stride, m.padding_spec)
    if isinstance(m, tb.BatchNorm):
        return (m.num_features,)
    if isinstance(m, tb.Dense):
        return (m.out_features,)
    return ()


def _keras_config(layer) -> tuple:
    c = layer.get_config()
    kind = type(layer).__name__
    if kind in ("Conv2D", "SeparableConv2D"):
        padding = _padding(c["kernel_size"], c["padding"])
        return (c["filters"], tuple(c["kernel_size"]), tuple(c["strides"]), padding, c["use_bias"])
    if kind == "MaxPooling2D":
        return (tuple(c["pool_size"]), tuple(c["strides"]), c["padding"])
    if kind == "BatchNormalization":
        return (int(layer.gamma.shape[0]),)
    if kind == "Dense":
        return (c["units"],)
    return ()


def _keras_graph(model) -> dict:
    """Kind -> list, in model.layers order, of (config, kinds of the layers feeding it)."""
    graph: dict = {}
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        producers = tuple(
            type(t._keras_history.operation).__name__ for t in layer._inbound_nodes[0].input_tensors
        )
        graph.setdefault(kind, []).append((_keras_config(layer), producers))
    return graph


def _torch_graph(model: nn.Module) -> dict:
    """The same, from the fx graph of ``model`` (torchblocks layers as leaves), in execution order."""
    graph = LeafTracer().trace(model)

    def kind(node: torch.fx.Node):
        if node.op == "placeholder":
            return "InputLayer"
        if node.op == "call_function" and node.target is operator.add:
            return "Add"
        if node.op == "call_module":
            return _kind(model.get_submodule(node.target))
        return None

    result: dict = {}
    for node in graph.nodes:
        k = kind(node)
        if k in (None, "InputLayer"):
            continue
        config = _torch_config(model.get_submodule(node.target)) if node.op == "call_module" else ()
        producers = tuple(kind(a) for a in node.args if isinstance(a, torch.fx.Node))
        result.setdefault(k, []).append((config, producers))
    return result


def _weighted_leaves(model: nn.Module) -> list:
    """(Keras kind, Keras-layout weight shapes) of the weighted layers in named_modules() order."""
    leaves, inside = [], None
    for name, m in model.named_modules():
        if inside is not None and name.startswith(inside):
            continue
        if isinstance(m, tb.SeparableConv2d):
            inside = name + "."
            c, mult, (kh, kw) = m.in_channels, m.depthwise.depth_multiplier, m.depthwise.kernel_size
            leaves.append(("SeparableConv2D", [(kh, kw, c, mult), (1, 1, c * mult, m.out_channels)]))
        elif isinstance(m, tb.Conv2d):
            leaves.append(("Conv2D", [(*m.kernel_size, m.in_channels, m.out_channels)]))
        elif isinstance(m, tb.BatchNorm):
            leaves.append(("BatchNormalization", [(m.num_features,)] * 4))
        elif isinstance(m, tb.Dense):
            leaves.append(("Dense", [(m.in_features, m.out_features), (m.out_features,)]))
    return leaves


def test_weighted_layer_order_matches_keras(model, keras_xception):
    expected = [
        (type(l).__name__, [tuple(w.shape) for w in l.weights]) for l in keras_xception.layers if l.weights
    ]
    actual = _weighted_leaves(model)
    assert len(actual) == len(expected) == 81
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a == e, f"weighted layer {i}: torchblocks {a}, Keras {e}"


def test_graph_matches_keras(model, keras_xception):
    """Every layer's configuration and its producers (so every ReLU's place) equal Keras'."""
    expected, actual = _keras_graph(keras_xception), _torch_graph(model)
    assert sorted(actual) == sorted(expected)
    for kind in expected:
        assert actual[kind] == expected[kind], kind
    # The ReLU placement the Keras source spells out, as a readable spot check.
    assert expected["SeparableConv2D"][0][1] == ("Activation",)  # block2_sepconv1 after block1's ReLU
    assert len(expected["Activation"]) == 35


def test_parameter_counts(model, keras_xception):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert trainable == 22_855_952
    assert trainable + stats == 22_910_480 == keras_xception.count_params()


@pytest.mark.parametrize("include_top, pooling, shape", TOP_CASES)
def test_heads(features, include_top, pooling, shape):
    """Pooled and top outputs follow from the feature map of the same weights."""
    head = tb.models.xception(num_classes=7, include_top=include_top, pooling=pooling).eval()
    result = head.load_state_dict(features.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys == (["fc.weight", "fc.bias"] if include_top else [])
    x = torch.randn(2, 3, 71, 71)
    with torch.no_grad():
        fmap, out = features(x), head(x)
    assert out.shape == shape
    if pooling == "avg" or include_top:
        pooled = fmap.mean((2, 3))
        expected = pooled @ head.fc.weight.T + head.fc.bias if include_top else pooled
    elif pooling == "max":
        expected = fmap.amax((2, 3))
    else:
        expected = fmap
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", SIZES)
def test_feature_map_size(features, size):
    with torch.no_grad():
        out = features(torch.randn(1, 3, size, size + 1))
    assert out.shape == (1, 2048, _keras_feature_size(size), _keras_feature_size(size + 1))


@pytest.mark.slow
def test_full_size_forward(model):
    """The Keras default 299×299, once (about 2 s on 2 cores)."""
    with torch.no_grad():
        out = model(torch.randn(1, 3, 299, 299))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(1, 3, 70, 71), (1, 3, 71, 70), (1, 3, 32, 32)])
def test_too_small_input(model, shape):
    with pytest.raises(ValueError, match=f"at least 71x71 pixels; received {shape[2]}x{shape[3]}"):
        model(torch.zeros(shape))


def test_not_nchw(model):
    with pytest.raises(ValueError, match="4-D"):
        model(torch.zeros(3, 71, 71))


@pytest.mark.parametrize("kwargs, error, message", BAD_ARGS)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        tb.models.xception(**kwargs)


@pytest.mark.slow
def test_scripted(model):
    check_scripted(model, (torch.randn(1, 3, 71, 71),))


def test_fx_trace_with_leaves(model):
    traced = torch.fx.GraphModule(model, LeafTracer().trace(model))
    x = torch.randn(1, 3, 71, 71)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="at least 71x71"):
        traced(torch.zeros(1, 3, 64, 64))

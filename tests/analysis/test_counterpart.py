"""``standard_counterpart``: separable, depthwise and grouped convs become full convs of the same
job, wherever they are held (shared modules too), written as torchblocks layers, as plain
``nn.Conv2d`` (torchvision, timm) or converted from Keras; refusals are clear."""
import warnings

import pytest
import torch
import torchvision
from torch import nn

import torchblocks as tb
from torchblocks import analysis


def _convs(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_separable_layer_and_a_depthwise_pointwise_pair():
    original = nn.Sequential(
        tb.SeparableConv2d(4, 8, 5, 2, "same", depth_multiplier=2, activation="relu"),
        nn.Sequential(tb.DepthwiseConv2d(8, 3, padding=(1, 2), dilation=(1, 2), bias=False)),
        tb.Conv2d(8, 6, 1),
    )
    counterpart = analysis.standard_counterpart(original)
    first, second = counterpart[0], counterpart[1][0]
    assert type(first) is tb.Conv2d and type(second) is tb.Conv2d
    assert (first.in_channels, first.out_channels, first.kernel_size, first.stride) == (4, 8, (5, 5), (2, 2))
    assert first.padding_spec == "same" and first.bias is not None and isinstance(first.act, nn.ReLU)
    # The depthwise conv and the 1×1 conv after it are one separable pair: one full 3×3 conv 8 -> 6
    # with the depthwise geometry and the pointwise bias; the pointwise slot holds an Identity.
    assert (second.in_channels, second.out_channels, second.kernel_size) == (8, 6, (3, 3))
    assert second.padding_spec == (1, 2) and second.dilation == (1, 2) and second.bias is not None
    assert type(counterpart[2]) is nn.Identity
    assert isinstance(original[0], tb.SeparableConv2d) and isinstance(original[1][0], tb.DepthwiseConv2d)
    x = torch.randn(2, 4, 11, 12)
    assert counterpart(x).shape == original(x).shape == (2, 6, 6, 6)
    positions = 2 * 36  # 1: 8·4·25 per position, + ReLU; 2: 6·8·9
    assert analysis.count(counterpart, x).macs == positions * (8 * 4 * 25 + 8 + 6 * 8 * 9)


def test_a_layer_is_replaced_as_a_whole_and_script_modules_are_refused():
    layer = tb.SeparableConv2d(3, 7, (3, 5), 2, "valid", activation="tanh")
    full = analysis.standard_counterpart(layer)
    assert type(full) is tb.Conv2d and full.kernel_size == (3, 5) and isinstance(full.act, nn.Tanh)
    assert (full.in_channels, full.out_channels, full.stride, full.padding_spec) == (3, 7, (2, 2), "valid")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(tb.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match="Expected an eager nn.Module"):
        analysis.standard_counterpart(scripted)
    with pytest.raises(TypeError, match="submodule '1' is a ScriptModule"):
        analysis.standard_counterpart(nn.Sequential(tb.SeparableConv2d(3, 3, 1), scripted))


def test_the_book_model_has_keras_conv2d_count():
    counterpart = analysis.standard_counterpart(tb.models.get_model("SeparableConvNet"))
    # Conv2D(3→32), (32→64), (64→64), (64→128), (128→64), (64→128), all 3×3 with bias, + Dense.
    convs = [(3, 32), (32, 64), (64, 64), (64, 128), (128, 64), (64, 128)]
    expected = sum(9 * i * o + o for i, o in convs) + 128 * 32 + 32 + 32 * 10 + 10
    assert expected == 282_282
    assert sum(p.numel() for p in counterpart.parameters()) == expected
    assert not any(isinstance(m, tb.SeparableConv2d) for m in counterpart.modules())


SHARED = [tb.SeparableConv2d(8, 8, 3, padding="same"), nn.Conv2d(8, 8, 3, padding=1, groups=4)]


@pytest.mark.parametrize("layer", SHARED, ids=["separable", "grouped"])
def test_a_module_used_twice_is_replaced_at_both_places_and_stays_shared(layer):
    model = nn.Sequential(layer, nn.ReLU(), layer)
    counterpart = analysis.standard_counterpart(model)
    assert counterpart[0] is counterpart[2] and isinstance(counterpart[0], nn.Conv2d)
    assert counterpart[0].groups == 1 and counterpart[0].in_channels == 8
    x = torch.randn(1, 8, 6, 6)
    report = analysis.count(counterpart, x)
    assert report.params == 8 * 8 * 9 + 8  # one conv, counted once
    assert report.macs == 2 * 8 * 8 * 9 * 36 + 8 * 36  # two calls and a ReLU


def test_tied_weights_stay_tied():
    a, b = nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.Conv2d(6, 6, 3, padding=1, groups=6)
    b.weight = a.weight
    counterpart = analysis.standard_counterpart(nn.Sequential(a, b))
    assert counterpart[0].weight is counterpart[1].weight
    assert counterpart[0].bias is not counterpart[1].bias
    assert counterpart[0].weight.shape == (6, 6, 3, 3)
    assert analysis.count(counterpart, torch.randn(1, 6, 5, 5)).params == 6 * 6 * 9 + 2 * 6


class _Branches(nn.Module):
    """A depthwise conv read by two convs: not a pair (its output is used twice)."""

    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.left, self.right = nn.Conv2d(4, 5, 1), nn.Conv2d(4, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x)
        return self.left(y) + self.right(y)


class _FunctionalRelu(nn.Module):
    """dw -> F.relu -> pw: the activation is not a module, so the two convs are not one pair."""

    def __init__(self) -> None:
        super().__init__()
        self.dw, self.pw = tb.DepthwiseConv2d(4, 3, padding="same"), tb.Conv2d(4, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(torch.relu(self.dw(x)))


NOT_PAIRS = [
    (_Branches(), ["dw: depthwise 3x3 conv 4->4 -> full conv"]),
    (_FunctionalRelu(), ["dw: depthwise 3x3 conv 4->4 -> full conv"]),
    # A 1×1 conv with stride 2 is not a pointwise conv of a separable pair.
    (nn.Sequential(nn.Conv2d(4, 8, 3, groups=4), nn.Conv2d(8, 5, 1, stride=2)),
     ["0: depthwise 3x3 conv 4->8 -> full conv"]),
    # A grouped conv (groups < in_channels) is replaced on its own, and so is a grouped 1×1.
    (nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Conv2d(8, 4, 1, groups=4)),
     ["0: groups=2 3x3 conv 4->8 -> full conv", "1: groups=4 1x1 conv 8->4 -> full conv"]),
]


@pytest.mark.parametrize("model, lines", NOT_PAIRS, ids=["branches", "functional", "strided", "grouped"])
def test_convs_that_are_not_a_separable_pair_are_replaced_one_by_one(model, lines):
    from torchblocks.analysis.counterpart import build_counterpart

    built = build_counterpart(model)
    assert list(built.replaced) == lines and built.note == ""
    assert not any(c.groups > 1 for c in _convs(built.module))
    x = torch.randn(1, 4, 7, 7)
    assert built.module(x).shape == model(x).shape


def test_a_conv_with_a_weight_parametrization_is_refused():
    conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(NotImplementedError, match=r"'0' \(ParametrizedConv2d\) carries a weight parametrization"):
        analysis.standard_counterpart(nn.Sequential(conv))


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dw, self.pw = nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent: torch.fx cannot trace it
            x = -x
        return self.pw(self.dw(x))


def test_an_untraceable_model_is_replaced_conv_by_conv_and_says_so():
    with pytest.warns(RuntimeWarning, match="torch.fx could not trace _Untraceable") as record:
        counterpart = analysis.standard_counterpart(_Untraceable())
    assert len(record) == 1
    assert counterpart.dw.groups == 1 and counterpart.dw.out_channels == 4 and counterpart.pw.out_channels == 6


def test_nothing_to_replace_warns():
    with pytest.warns(RuntimeWarning, match="Sequential: nothing to replace"):
        copy = analysis.standard_counterpart(nn.Sequential(tb.Conv2d(3, 4, 3), nn.ReLU()))
    assert isinstance(copy[0], tb.Conv2d)


def _conv_output_shapes(model: nn.Module, x: torch.Tensor):
    """The output shape of each conv of ``model`` on ``x``, by forward hooks."""
    shapes = {}
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.__setitem__(m, o.shape))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return shapes


@pytest.mark.slow
def test_torchvision_mobilenet_v2_pairs_become_full_convs():
    with torch.device("meta"):
        model = torchvision.models.mobilenet_v2(weights=None)
    x = torch.empty(1, 3, 64, 64, device="meta")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = analysis.compare(model, x)
    # 17 inverted residual blocks, each dw 3×3 -> BN -> ReLU6 -> 1×1 projection: 17 pairs.
    assert len(result.replaced) == 17 and all("+" in line for line in result.replaced)
    shapes = _conv_output_shapes(model, x)
    saved = 0
    for block in model.features[1:18]:
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        dw, pw = convs[-2], convs[-1]
        positions = shapes[dw][2] * shapes[dw][3]
        sep = 9 * dw.in_channels * positions + dw.in_channels * pw.out_channels * positions
        saved += 9 * dw.in_channels * pw.out_channels * positions - sep
    assert result.counterpart.macs_by_kind["conv_dense"] == result.model.macs_by_kind["conv_dense"] + saved
    assert 0 < result.macs_ratio < 1


@pytest.mark.slow
def test_torchvision_convnext_and_timm_depthwise_convs_are_recognised():
    import timm

    with torch.device("meta"):
        convnext = torchvision.models.convnext_tiny(weights=None)
        mobilenet = timm.create_model("tf_mobilenetv3_small_minimal_100", pretrained=False)
    x = torch.empty(1, 3, 64, 64, device="meta")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convnext_result = analysis.compare(convnext, x)
        timm_result = analysis.compare(mobilenet, x)
    # ConvNeXt: a 7×7 depthwise conv then LayerNorm and Linear layers (no 1×1 conv): 18 on their own.
    assert len(convnext_result.replaced) == 18 and not any("+" in r for r in convnext_result.replaced)
    assert 0 < convnext_result.macs_ratio < 1
    # timm: its 'same'-padding depthwise convs (Conv2dSame) keep their class, as full convs.
    counterpart = analysis.standard_counterpart(mobilenet)
    assert not any(c.groups > 1 for c in _convs(counterpart))
    same = [m for m in counterpart.modules() if type(m).__name__ == "Conv2dSame"]
    assert same and all(m.groups == 1 for m in same)
    assert counterpart(x).shape == mobilenet(x).shape == (1, 1000)
    assert 0 < timm_result.macs_ratio < 1 and any("+" in r for r in timm_result.replaced)


def test_a_converted_keras_model_is_recognised():
    import keras

    keras_model = keras.Sequential([
        keras.Input((9, 9, 4)),
        keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Conv2D(6, 1, activation="relu"),
        keras.layers.Conv2D(6, 3, groups=2),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3),
    ])
    model = tb.interop.keras.from_keras(keras_model)
    result = analysis.compare(model, torch.randn(1, 4, 9, 9))
    assert len(result.replaced) == 2 and "depthwise 3x3 + pointwise 4->6" in result.replaced[0]
    # dw + BN + ReLU + 1×1 conv (+ ReLU) -> a full 3×3 conv 4 -> 6 (+ ReLU); grouped 3×3 -> full.
    head = 6 * 49 + 6 * 3
    assert result.model.macs == 81 * (4 * 9 + 2 * 4 + 4 + 4 * 6 + 6) + 49 * 6 * 3 * 9 + head
    assert result.counterpart.macs == 81 * (6 * 4 * 9 + 6) + 49 * 6 * 6 * 9 + head
    assert result.counterpart.params == (6 * 4 * 9 + 6) + (6 * 6 * 9 + 6) + (6 * 3 + 3)


# MobileNet v1 (Howard et al. 2017, Table 1): (C_in, C_out, stride) of the 13 depthwise-separable
# layers after the 3×3 stride-2 stem conv 3 -> 32.
MOBILENET_LAYERS = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1),
                    (256, 512, 2)] + [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]


def _mobilenet_from_torchblocks() -> nn.Module:
    """MobileNet v1 as Keras Applications builds it: dw -> BN -> ReLU6 -> pw -> BN -> ReLU6, a
    1×1 conv classifier after global average pooling."""
    layers = [tb.Conv2d(3, 32, 3, 2, "same", bias=False), tb.BatchNorm(32), nn.ReLU6()]
    for c_in, c_out, stride in MOBILENET_LAYERS:
        layers += [tb.DepthwiseConv2d(c_in, 3, stride, "same", bias=False), tb.BatchNorm(c_in), nn.ReLU6(),
                   tb.Conv2d(c_in, c_out, 1, bias=False), tb.BatchNorm(c_out), nn.ReLU6()]
    layers += [tb.GlobalAvgPool2d(keepdims=True), nn.Dropout(1e-3), tb.Conv2d(1024, 1000, 1), nn.Flatten()]
    with torch.device("meta"):
        return nn.Sequential(*layers)


def _mobilenet_from_keras() -> nn.Module:
    import keras

    keras_model = keras.applications.MobileNet(weights=None, input_shape=(224, 224, 3),
                                               classifier_activation=None)
    try:
        return tb.interop.keras.from_keras(keras_model)
    except ValueError as error:
        if "Reshape" in str(error):
            pytest.skip("from_keras does not convert Keras' Reshape layer yet")
        raise


@pytest.mark.slow
@pytest.mark.parametrize("build", [_mobilenet_from_torchblocks, _mobilenet_from_keras], ids=["torchblocks", "keras"])
def test_mobilenet_against_conv_mobilenet_reproduces_the_paper(build):
    model = build()
    result = analysis.compare(model, torch.randn(1, 3, 224, 224))
    assert len(result.replaced) == 13
    # Closed form: stem 112²·32·27, each layer's depthwise 9·C_in·n² and pointwise C_in·C_out·n²
    # (full conv: 9·C_in·C_out·n²), classifier 1024·1000.
    n, separable, standard = 112, 112 * 112 * 32 * 27, 112 * 112 * 32 * 27
    sep_params = std_params = 27 * 32
    bn_outputs = 32 * 112 * 112
    std_bn_outputs = bn_outputs
    for c_in, c_out, stride in MOBILENET_LAYERS:
        n //= stride
        separable += 9 * c_in * n * n + c_in * c_out * n * n
        standard += 9 * c_in * c_out * n * n
        sep_params += 9 * c_in + c_in * c_out
        std_params += 9 * c_in * c_out
        bn_outputs += (c_in + c_out) * n * n
        std_bn_outputs += c_out * n * n
    classifier = 1024 * 1000
    assert result.model.macs_by_kind["conv_dense"] == separable + classifier == 568_740_352
    assert result.counterpart.macs_by_kind["conv_dense"] == standard + classifier == 4_867_293_184
    # Table 4: 569 million mult-adds against 4866 million for "Conv MobileNet" (the paper's
    # figure for the latter leaves the 1.0M classifier out: 4,866.3M).
    assert round((separable + classifier) / 1e6) == 569 and round(standard / 1e6) == 4866
    # 4.2M against 29.3M parameters (convolutions and classifier; BatchNorm adds 2 per channel).
    bn_params = 2 * 32 + sum(2 * (c_in + c_out) for c_in, c_out, _ in MOBILENET_LAYERS)
    assert result.model.params == sep_params + classifier + 1000 + bn_params == 4_231_976
    std_bn_params = 2 * 32 + sum(2 * c_out for _, c_out, _ in MOBILENET_LAYERS)
    assert result.counterpart.params == std_params + classifier + 1000 + std_bn_params == 29_294_088
    assert round(result.model.params / 1e5) == 42 and round(result.counterpart.params / 1e5) == 293
    # BatchNorm (2 per element in eval mode) and ReLU6 (1 per element) are reported apart: the
    # counterpart drops the pair's inner BN and ReLU6, keeping the pointwise conv's.
    assert result.model.macs_by_kind["norm"] == 2 * bn_outputs
    assert result.counterpart.macs_by_kind["norm"] == 2 * std_bn_outputs
    assert result.model.macs_by_kind["activation"] == bn_outputs
    assert result.counterpart.macs_by_kind["activation"] == std_bn_outputs

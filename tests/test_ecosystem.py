"""torchblocks layers and models under the tools PyTorch users already run on their models.

Every case is compared with its plain twin: the same computation built from ``torch.nn`` modules
only, with the same weights (``plain_twin``). The counters (torchinfo, ptflops with both backends,
thop, fvcore, ``torch.utils.flop_counter``) must report the same exact integers for both; the
graph tools (``torch.fx``, ``torch.export``, ``torch.compile``, FX quantization, pruning,
parametrizations, ``copy.deepcopy``, ``torch.func.functional_call``) must run on ours and give
what they give on the twin, or the eager output. thop and ptflops' ``pytorch`` backend get
``tb.ecosystem``'s hooks, as the README shows.
"""
import contextlib
import copy
import io
import warnings
from collections import OrderedDict

import ptflops
import pytest
import torch
import torch.fx
import torch.nn.utils.prune
import torchinfo
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import torchblocks as tb
from torchblocks.padding import same_padding, same_pool_plan

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # thop's import uses distutils' LooseVersion
    import thop


class PlainResidual(nn.Module):
    """``body(x) + shortcut(x)`` as a user writes it in plain PyTorch."""

    def __init__(self, body: nn.Module, shortcut: nn.Module) -> None:
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


class Permute(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


def _with_activation(layer: nn.Module, module: nn.Module) -> nn.Module:
    return nn.Sequential(layer, copy.deepcopy(module.act)) if module.has_activation else layer


def _conv_twin(m: tb.Conv2d, shape) -> nn.Module:
    padding, pad = m.padding, None
    if m.same_is_dynamic:
        (top, bottom), (left, right) = (
            same_padding(n, k, s, d) for n, k, s, d in zip(shape[-2:], m.kernel_size, m.stride, m.dilation)
        )
        padding = (top, left) if (top, left) == (bottom, right) else (0, 0)
        pad = None if (top, left) == (bottom, right) else nn.ZeroPad2d((left, right, top, bottom))
    conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, padding, m.dilation, m.groups,
                     m.bias is not None)
    conv.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("act.")})
    return _with_activation(conv if pad is None else nn.Sequential(pad, conv), m)


def _pool_twin(m: nn.Module, shape) -> nn.Module:
    padding = m.padding
    if m.padding_spec == "same":
        plans = [same_pool_plan(k, s) for k, s in zip(m.kernel_size, m.stride)]
        assert all(trim == 0 for _, trim in plans), "no plain twin for a trimmed 'same' pool"
        padding = tuple(befores[n % len(befores)] for (befores, _), n in zip(plans, shape[-2:]))
    if isinstance(m, tb.MaxPool2d):
        return nn.MaxPool2d(m.kernel_size, m.stride, padding, ceil_mode=m.ceil_mode)
    return nn.AvgPool2d(m.kernel_size, m.stride, padding, m.ceil_mode, m.count_include_pad)


def _bn_twin(m: tb.BatchNorm, shape) -> nn.Module:
    torch_class = nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d
    bn = torch_class(m.bn.num_features, m.bn.eps, m.bn.momentum)
    bn.load_state_dict(m.bn.state_dict())
    bn.train(m.training)
    return bn if m.axis == 1 else nn.Sequential(Permute(0, 3, 1, 2), bn, Permute(0, 2, 3, 1))


def _twin(m: nn.Module, shapes) -> nn.Module:
    shape = shapes.get(m)
    if isinstance(m, tb.SeparableConv2d):
        layers = [_twin(m.depthwise, shapes), _twin(m.pointwise, shapes)]
        return nn.Sequential(*layers, *([copy.deepcopy(m.act)] if m.has_activation else []))
    if isinstance(m, tb.Conv2d):
        return _conv_twin(m, shape)
    if isinstance(m, tb.Dense):
        linear = nn.Linear(m.in_features, m.out_features, m.bias is not None)
        linear.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("act.")})
        return _with_activation(linear, m)
    if isinstance(m, tb.BatchNorm):
        return _bn_twin(m, shape)
    if isinstance(m, (tb.MaxPool2d, tb.AvgPool2d)):
        return _pool_twin(m, shape)
    if isinstance(m, (tb.GlobalAvgPool2d, tb.GlobalMaxPool2d)):
        pool = nn.AdaptiveAvgPool2d(1) if isinstance(m, tb.GlobalAvgPool2d) else nn.AdaptiveMaxPool2d(1)
        return pool if m.keepdims else nn.Sequential(pool, nn.Flatten())
    if isinstance(m, tb.Residual):
        return PlainResidual(_twin(m.body, shapes), _twin(m.shortcut, shapes))
    if isinstance(m, tb.Projection):
        return nn.Sequential(_twin(m.proj, shapes), _twin(m.bn, shapes))
    # A container (nn.Sequential, a model class): the same forward over twinned children, with dicts
    # of its own (hooks and buffers the tools add must not reach the original).
    twin = copy.copy(m)
    twin.__dict__ = {k: copy.copy(v) if isinstance(v, dict) else v for k, v in m.__dict__.items()}
    twin._modules = OrderedDict((name, _twin(child, shapes)) for name, child in m._modules.items())
    return twin


def plain_twin(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """``model`` rebuilt from plain torch.nn modules, with its weights, for inputs shaped like ``x``
    (Keras 'same' padding depends on the input size)."""
    shapes = {}

    def record(module, args):
        shapes.setdefault(module, args[0].shape)

    handles = [m.register_forward_pre_hook(record) for m in model.modules()]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return _twin(model, shapes).train(model.training)


# (factory, input shape). Sizes make 'same' dynamic where the id says so; BN statistics are left
# at their defaults since the tools read shapes and the comparisons are exact anyway.
LAYERS = {
    "conv-valid": (lambda: tb.Conv2d(4, 8, 3), (2, 4, 10, 10)),
    "conv-same-relu": (lambda: tb.Conv2d(4, 8, 3, padding="same", activation="relu"), (2, 4, 9, 9)),
    "conv-same-stride2-asym": (lambda: tb.Conv2d(4, 8, 3, 2, "same"), (2, 4, 10, 10)),
    "conv-same-stride2-sym": (lambda: tb.Conv2d(4, 8, 3, 2, "same", activation="tanh"), (2, 4, 9, 9)),
    "conv-prelu": (lambda: tb.Conv2d(4, 8, 3, activation=nn.PReLU()), (2, 4, 8, 8)),
    "depthwise": (lambda: tb.DepthwiseConv2d(4, 3, padding="same", depth_multiplier=2), (2, 4, 8, 8)),
    "separable-relu": (lambda: tb.SeparableConv2d(4, 8, 3, padding="same", activation="relu"), (2, 4, 8, 8)),
    "dense-softmax": (lambda: tb.Dense(6, 5, activation="softmax"), (3, 6)),
    "bn-axis1": (lambda: tb.BatchNorm(4).eval(), (2, 4, 5, 5)),
    "bn-axis-1": (lambda: tb.BatchNorm(4, axis=-1).eval(), (2, 5, 5, 4)),
    "bn-vector": (lambda: tb.BatchNorm(6).eval(), (3, 6)),
    "maxpool-valid": (lambda: tb.MaxPool2d(2), (2, 4, 8, 8)),
    "maxpool-same-stride2": (lambda: tb.MaxPool2d(3, 2, "same"), (2, 4, 9, 9)),
    "avgpool-same-static": (lambda: tb.AvgPool2d(3, 1, "same"), (2, 4, 7, 7)),
    "avgpool-same-stride2": (lambda: tb.AvgPool2d(3, 2, "same"), (2, 4, 10, 9)),
    "global-avgpool": (lambda: tb.GlobalAvgPool2d(), (2, 4, 5, 5)),
    "global-maxpool": (lambda: tb.GlobalMaxPool2d(keepdims=True), (2, 4, 5, 5)),
    "residual": (lambda: tb.Residual(tb.Conv2d(4, 4, 3, padding="same")), (2, 4, 6, 6)),
    "projection": (lambda: tb.Projection(4, 8, 2, norm=True).eval(), (2, 4, 7, 7)),
}
MODELS = {
    "separableconvnet": (lambda: tb.models.SeparableConvNet(3, 10).eval(), (1, 3, 32, 32)),
    "resnet18-separable": (lambda: tb.models.resnet18(num_classes=10, conv="separable").eval(), (1, 3, 32, 32)),
    "xception": (lambda: tb.models.xception(num_classes=10).eval(), (1, 3, 71, 71)),
}
CASES = [pytest.param(name, id=name) for name in LAYERS] + [
    pytest.param(name, id=name, marks=pytest.mark.slow) for name in MODELS
]
# The graph tools cost more per call: every layer kind once, and the book's model.
GRAPH_CASES = ["conv-same-relu", "conv-same-stride2-asym", "separable-relu", "dense-softmax", "bn-axis-1",
               "maxpool-same-stride2", "avgpool-same-stride2", "global-avgpool", "residual", "separableconvnet"]
WEIGHTED_CASES = ["conv-same-stride2-asym", "conv-same-stride2-sym", "depthwise", "separable-relu",
                  "dense-softmax", "projection", "separableconvnet"]


def _case(name: str):
    factory, shape = {**LAYERS, **MODELS}[name]
    model = factory()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    return model, plain_twin(model, x), x


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _torchinfo(model, x, ours):
    stats = torchinfo.summary(model, input_data=x, verbose=0)
    return stats.total_params, stats.total_mult_adds


def _ptflops(backend):
    def count(model, x, ours):
        hooks = tb.ecosystem.ptflops_custom_modules_hooks() if ours and backend == "pytorch" else {}
        with _quiet():
            macs, params = ptflops.get_model_complexity_info(
                model, tuple(x.shape[1:]), input_constructor=lambda _: x, as_strings=False,
                print_per_layer_stat=False, backend=backend, custom_modules_hooks=hooks,
            )
        assert macs is not None, "ptflops failed"
        return macs, params
    return count


def _thop(model, x, ours):
    with _quiet():
        macs, params = thop.profile(nn.Sequential(model), inputs=(x,), verbose=False,
                                    custom_ops=tb.ecosystem.thop_custom_ops() if ours else None)
    return macs, params


def _fvcore(model, x, ours):
    analysis = tb.analysis.handlers.FlopCountAnalysis(model, x)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis.total(), dict(analysis.unsupported_ops())


def _flop_counter(model, x, ours):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


COUNTERS = {
    "torchinfo": _torchinfo,
    "ptflops-pytorch": _ptflops("pytorch"),
    "ptflops-aten": _ptflops("aten"),
    "thop": _thop,
    "fvcore": _fvcore,
    "flop_counter": _flop_counter,
}


def test_plain_twins_compute_the_same_outputs():
    # The oracle of every row below: each twin is the same function as its torchblocks case.
    for name in list(LAYERS) + ["separableconvnet"]:
        model, twin, x = _case(name)
        with torch.no_grad():
            assert torch.equal(model(x), twin(x)), name
        assert not any(type(m).__module__.startswith("torchblocks") for m in twin.modules() if m is not twin), name


# torchinfo counts a layer holding an activation module as a container (README; tested below).
COUNTER_CASES = [
    pytest.param(tool, *case.values, id=f"{case.id}-{tool}", marks=case.marks)
    for case in CASES for tool in COUNTERS if not (tool == "torchinfo" and case.id == "conv-prelu")
]


@pytest.mark.parametrize("tool, name", COUNTER_CASES)
def test_counters_give_the_plain_torch_numbers(tool, name):
    model, twin, x = _case(name)
    ours, plain = COUNTERS[tool](model, x, True), COUNTERS[tool](twin, x, False)
    if tool == "fvcore":
        # Same MACs, and no operator fvcore does not know beyond the twin's (F.pad, max_pool2d).
        assert ours[0] == plain[0] and set(ours[1]) <= set(plain[1]), (ours, plain)
    else:
        assert ours == plain


def test_exact_type_counters_need_the_hooks():
    # Why tb.ecosystem exists: without it thop and ptflops' module backend skip a subclass.
    model, twin, x = _case("conv-valid")
    with _quiet():
        macs, _ = thop.profile(nn.Sequential(model), inputs=(x,), verbose=False)
    assert macs == 0 and _thop(twin, x, False)[0] == 8 * 4 * 9 * 8 * 8 * 2


def test_torchinfo_sees_a_module_activation_as_a_container():
    # Documented in the README: an activation passed as a module is a child, so torchinfo counts
    # only the child's MACs; by name the layer is a leaf and counts as nn.Conv2d.
    by_module = tb.Conv2d(4, 8, 3, activation=nn.PReLU())
    by_name = tb.Conv2d(4, 8, 3, activation="relu")
    x = torch.randn(2, 4, 10, 10)
    assert _torchinfo(by_module, x, True) == (4 * 8 * 9 + 8 + 1, 2 * 1)
    assert _torchinfo(by_name, x, True) == _torchinfo(plain_twin(by_name, x), x, False)


def test_layers_without_anything_to_hold_are_leaves():
    for name in ("conv-valid", "conv-same-relu", "depthwise", "dense-softmax", "maxpool-same-stride2"):
        model, _, _ = _case(name)
        assert list(model.children()) == [] and "Identity" not in repr(model), name
    for model in (tb.models.SeparableConvNet(), tb.models.xception(), tb.models.resnet18(conv="separable")):
        assert "(act): Identity()" not in repr(model)


# --- graph tools -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GRAPH_CASES)
def test_fx_symbolic_trace(name):
    model, _, x = _case(name)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", GRAPH_CASES)
def test_torch_export(name):
    model, _, x = _case(name)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.equal(exported.module()(x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", GRAPH_CASES)
def test_torch_compile_fullgraph(name):
    # fullgraph=True fails on any graph break; backend="eager" checks capture without code generation.
    model, _, x = _case(name)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))


QUANTIZED_CONVS = (torch.ops.quantized.conv2d, torch.ops.quantized.conv2d_relu)


@pytest.mark.parametrize("name", ["conv-same-relu", "conv-same-stride2-asym", "separable-relu",
                                  "maxpool-same-stride2", "residual", "separableconvnet"])
def test_fx_quantization_quantizes_our_convs_like_nn_conv2d(name):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    model, twin, x = _case(name)
    outputs = []
    for m in (model, twin):
        with _quiet():
            prepared = prepare_fx(m, get_default_qconfig_mapping("x86"), (x,))
            prepared(x)
            outputs.append((convert_fx(prepared), prepared))
    (ours, _), (plain, _) = outputs
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    quantized = [n for n in ours.graph.nodes if n.op == "call_function" and n.target in QUANTIZED_CONVS]
    assert len(quantized) == convs and not any(isinstance(m, nn.Conv2d) for m in ours.modules())
    with torch.no_grad():
        assert torch.equal(ours(x), plain(x))


def _weighted(model: nn.Module):
    return [m for m in model.modules() if type(m) in (nn.Conv2d, nn.Linear) or isinstance(m, (tb.Conv2d, tb.Dense))]


@pytest.mark.parametrize("name", WEIGHTED_CASES)
def test_pruning(name):
    model, twin, x = _case(name)
    for m in (model, twin):
        for layer in _weighted(m):
            torch.nn.utils.prune.l1_unstructured(layer, "weight", amount=0.5)
    with torch.no_grad():
        assert torch.equal(model(x), twin(x))
    assert all(float((layer.weight == 0).float().mean()) >= 0.5 for layer in _weighted(model))


@pytest.mark.parametrize("parametrize", ["weight_norm", "spectral_norm"])
@pytest.mark.parametrize("name", WEIGHTED_CASES)
def test_parametrizations(name, parametrize):
    model, twin, x = _case(name)
    apply = getattr(torch.nn.utils.parametrizations, parametrize)
    for m in (model, twin):
        torch.manual_seed(0)  # spectral_norm starts its power iteration from a random vector
        for layer in _weighted(m):
            apply(layer)
        m.eval()
    with torch.no_grad():
        assert torch.equal(model(x), twin(x))


@pytest.mark.parametrize("name", list(LAYERS) + ["separableconvnet"])
def test_deepcopy_and_functional_call(name):
    model, _, x = _case(name)
    clone = copy.deepcopy(model)
    assert repr(clone) == repr(model) and list(clone.state_dict()) == list(model.state_dict())
    assert not {id(p) for p in clone.parameters()} & {id(p) for p in model.parameters()}
    doubled = {k: 2 * v.detach() for k, v in model.named_parameters()}
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))
        for k, v in clone.named_parameters():
            v.copy_(doubled[k])
        assert torch.equal(torch.func.functional_call(model, doubled, (x,)), clone(x))

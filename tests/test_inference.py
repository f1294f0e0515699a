"""``optimize_for_inference``: every path against the eval-mode model and what the returned
``InferenceModule`` accepts and refuses (the packed path's rewrites: ``test_packing.py``);
BatchNorm statistics come from a real batch (``reliability_cases.calibrate``), and generated
models (``generated_models``) check every path differentially against eager mode."""
import copy
import io
import warnings
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from torch import nn

import torchblocks as tb
from torchblocks import _onednn, inference
from torchblocks._onednn import PackedConv2d
from torchblocks.inference import InferenceModule, inference_candidates
from generated_models import (
    ImageAndVector, SharedReLU, SqueezeExcitation, any_model, differential, sensitive_reference,
)
from reliability_cases import calibrate

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _seq(*layers):
    return nn.Sequential(OrderedDict((f"l{i}", m) for i, m in enumerate(layers)))


FAST_PATHS = [
    "eager", "fuse_bn", "fuse_bn+channels_last", "fuse_bn+channels_last+packed", "frozen_torchscript",
    "channels_last+frozen_torchscript",
]


@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16, 16)
    body = _seq(tb.SeparableConv2d(4, 8, 3, 2, "same"), tb.BatchNorm(8), nn.ReLU())
    return calibrate(tb.Residual(body, tb.Projection(4, 8, 2, norm=True)), x), x


@pytest.mark.parametrize("path", FAST_PATHS)
def test_optimize_for_inference_paths_match_eager(path, small_net):
    model, x = small_net
    optimized = tb.optimize_for_inference(model, x, method=path)
    with torch.no_grad():
        torch.testing.assert_close(optimized(x), model(x), rtol=1e-4, atol=1e-4)


def test_optimize_for_inference_default_and_original_untouched(small_net):
    model, x = small_net
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optimized = tb.optimize_for_inference(model, x)
    assert callable(optimized) and isinstance(optimized, nn.Module)
    with torch.no_grad():
        torch.testing.assert_close(optimized(x), model(x), rtol=1e-4, atol=1e-4)
    assert sum(isinstance(m, tb.BatchNorm) for m in model.modules()) == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_optimize_for_inference_rejects_unknown_path(small_net):
    model, x = small_net
    with pytest.raises(ValueError, match=r"argument `method`.*Received method='tensorrt'"):
        tb.optimize_for_inference(model, x, method="tensorrt")


def test_inference_candidates_are_the_documented_ones():
    names = inference_candidates(nn.Identity(), (torch.zeros(1),))
    assert sorted(names) == sorted(FAST_PATHS + ["compile", "channels_last+compile"])


@pytest.mark.slow
def test_optimize_for_inference_compiled_path(small_net):
    model, x = small_net
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized = tb.optimize_for_inference(model, x, method="compile")
    with torch.no_grad():
        torch.testing.assert_close(optimized(x), model(x), rtol=1e-4, atol=1e-4)


def _close(actual, expected, rtol=1e-5):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))



def test_default_path_copies_and_pickles_and_its_graph_scripts(small_net):
    model, x = small_net
    optimized = tb.optimize_for_inference(model, x)
    buffer = io.BytesIO()
    torch.save(optimized, buffer)
    buffer.seek(0)
    with torch.no_grad():
        expected = optimized(x)
        copies = (torch.jit.script(optimized.module), copy.deepcopy(optimized), torch.load(buffer, weights_only=False))
        for other in copies:
            torch.testing.assert_close(other(x), expected, rtol=0, atol=0)


def test_default_path_without_onednn_falls_back_with_one_warning(small_net, monkeypatch):
    # A torch built without oneDNN, or one that renamed the private ops: the probe says no.
    monkeypatch.setattr(_onednn, "available", lambda: False)
    monkeypatch.setattr(_onednn, "unavailable_reason", lambda: "probe failed")
    model, x = small_net
    with pytest.warns(RuntimeWarning, match=r"unavailable \(probe failed\); using method 'fuse_bn\+channels_last'"):
        optimized = tb.optimize_for_inference(model, x)
    assert not any(isinstance(m, PackedConv2d) for m in optimized.modules())
    with torch.no_grad():
        _close(optimized(x), model(x), rtol=1e-4)
    with pytest.raises(NotImplementedError, match="needs oneDNN weight packing, which is unavailable here: probe failed"):
        tb.optimize_for_inference(model, x, method="fuse_bn+channels_last+packed")



class LeNet(nn.Module):
    """LeNet-5's layout: ``x.view(x.size(0), -1)`` straight after the convs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2 = nn.Linear(16 * 4 * 4, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.view(x.size(0), -1))))


# name -> (model factory, example inputs): every input rank optimize_for_inference takes.
ANY_RANK = {
    "mlp_batchnorm1d": (lambda: nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)),
                        lambda: (torch.randn(4, 5),)),
    "conv1d": (lambda: nn.Sequential(nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4), nn.ReLU()), lambda: (torch.randn(2, 3, 9),)),
    "conv3d": (lambda: nn.Sequential(nn.Conv3d(3, 4, 3), nn.BatchNorm3d(4), nn.ReLU()),
               lambda: (torch.randn(2, 3, 5, 5, 5),)),
    "lenet_view": (LeNet, lambda: (torch.randn(2, 1, 28, 28),)),
    "image_and_vector": (
        lambda: ImageAndVector(nn.Sequential(tb.Conv2d(3, 4, 3, padding="same"), tb.BatchNorm(4), nn.ReLU()), 4,
                               nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5)), 5),
        lambda: (torch.randn(2, 3, 8, 8), torch.randn(2, 6)),
    ),
}


def _any_rank(name):
    make, inputs = ANY_RANK[name]
    model, args = make(), inputs()
    return calibrate(model, *args), args


@pytest.mark.parametrize("method", ["auto", "fuse_bn+channels_last"])
@pytest.mark.parametrize("name", sorted(ANY_RANK))
def test_inputs_of_any_rank_and_layout_dependent_code_work(name, method):
    model, args = _any_rank(name)
    optimized = tb.optimize_for_inference(model, args, method=method)
    with torch.no_grad():
        expected = model(*args)
        actual = optimized(*args)
        other = tuple(torch.randn_like(a) for a in args)
        _close(optimized(*other), model(*other), rtol=1e-4)
    _close(actual, expected, rtol=1e-4)
    assert actual.is_contiguous() and actual.shape == expected.shape


def test_outputs_come_back_contiguous_as_in_eager_mode():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9)
    model = calibrate(nn.Sequential(tb.SeparableConv2d(3, 8, 3, padding="same"), tb.BatchNorm(8), nn.ReLU()), x)
    optimized = tb.optimize_for_inference(model, x)
    assert any(isinstance(m, PackedConv2d) for m in optimized.modules())  # packed: writes channels-last
    with torch.no_grad():
        y = optimized(x)
    assert y.is_contiguous()
    y.view(y.size(0), -1)  # a feature map the caller flattens, as after eager mode


@pytest.mark.parametrize("pool", [tb.GlobalAvgPool2d, tb.GlobalMaxPool2d])
def test_input_checks_that_read_only_shapes_cost_no_contiguous_copy(pool):
    # The global pools' rank check reads the shape only: the channels-last feature map reaches the
    # pooling as it is, and the one contiguous copy left is the (N, C) output's.
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9)
    model = nn.Sequential(tb.Conv2d(3, 8, 3, activation="relu"), pool()).eval()
    optimized = tb.optimize_for_inference(model, x)
    copies = [n for n in optimized.module.graph.nodes if n.op == "call_method" and n.target == "contiguous"]
    assert [n.args[0].op for n in copies] == ["call_method"]  # the pooling's flatten(1)
    with torch.no_grad():
        _close(optimized(x), model(x), rtol=1e-4)
        _close(optimized(-x), model(-x), rtol=1e-4)


def test_in_place_sums_and_products_take_channels_last_maps_without_a_copy():
    # The packed path writes EfficientNet's ``scale * x`` as ``x.mul_(scale)`` and a ReLU as
    # ``torch.relu_``: elementwise, so the channels-last map must reach them as it is (a
    # ``.contiguous()`` before each would copy every gated feature map, measured 2 ms of 16 on
    # EfficientNet-B0). The one contiguous copy left is the output's.
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 10)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), SqueezeExcitation(8), nn.Conv2d(8, 8, 3), nn.ReLU()).eval()
    optimized = tb.optimize_for_inference(model, x)
    nodes = list(optimized.module.graph.nodes)
    assert any(n.op == "call_method" and n.target == "mul_" for n in nodes)
    copies = [n for n in nodes if n.op == "call_method" and n.target == "contiguous"]
    assert [[u.op for u in n.users] for n in copies] == [["output"]]
    with torch.no_grad():
        _close(optimized(x), model(x), rtol=1e-4)
        _close(optimized(-x), model(-x), rtol=1e-4)


def test_outputs_claim_no_gradients_and_inputs_needing_them_are_refused(small_net):
    model, x = small_net
    optimized = tb.optimize_for_inference(model, x)
    y = optimized(x)
    assert not y.requires_grad and y.grad_fn is None
    with pytest.raises(ValueError, match=r"computes no gradients.*input 0 requires grad while grad mode is on"):
        optimized(x.clone().requires_grad_())
    with torch.no_grad():
        _close(optimized(x.clone().requires_grad_()), model(x), rtol=1e-4)


def test_inputs_of_another_dtype_rank_or_count_are_refused_by_name(small_net):
    model, x = small_net
    optimized = tb.optimize_for_inference(model, x)
    with pytest.raises(TypeError, match=r"Residual \(optimize_for_inference\) was built and checked for torch.float32 "
                                        r"input 0; received torch.float64"):
        optimized(x.double())
    with pytest.raises(ValueError, match=r"expects a 4-D input 0, as the example input was; received shape \(4, 16, 16\)"):
        optimized(x[0])
    with pytest.raises(TypeError, match=r"takes 1 input tensor\(s\), as the example inputs did; received 2"):
        optimized(x, x)


def test_a_packed_conv_fed_another_dtype_names_the_layer():
    packed = PackedConv2d(tb.Conv2d(4, 4, 3, padding="same"), [1, 4, 6, 6])
    with pytest.raises(TypeError, match=r"Conv2d \(packed for oneDNN\) has torch.float32 weights; received a "
                                        r"torch.float64 input"):
        packed(torch.randn(1, 4, 6, 6, dtype=torch.float64))


# dtype -> the tolerance the build-time check uses (atol = rtol).
DTYPE_TOLERANCE = {torch.float64: 1e-10, torch.bfloat16: 5e-2}


@pytest.mark.parametrize("dtype", list(DTYPE_TOLERANCE))
def test_models_in_other_dtypes_are_checked_with_their_own_tolerance(dtype, small_net):
    model, x = small_net
    model, x = copy.deepcopy(model).to(dtype), x.to(dtype)
    optimized = tb.optimize_for_inference(model, x)
    assert optimized.tolerance == (DTYPE_TOLERANCE[dtype],) * 2
    with torch.no_grad():
        expected = model(x)
        y = optimized(x)
        assert y.dtype == dtype
        error = float((y.double() - expected.double()).abs().max())
        # The tolerance is tight enough to matter: another input moves the output far more.
        other = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        moved = float((model(other).double() - expected.double()).abs().max())
    bound = DTYPE_TOLERANCE[dtype] * (1 + float(expected.double().abs().max()))
    assert error <= bound < moved / 10


def test_a_failed_check_names_the_dtype_tolerance_it_used(small_net, monkeypatch):
    model, x = small_net
    monkeypatch.setitem(inference.TOLERANCES, torch.bfloat16, 0.0)
    with pytest.raises(RuntimeError, match=r"\(fuse_bn\+channels_last\+packed, tolerance for torch.bfloat16\) of "
                                           r"Residual does not match eager mode"):
        tb.optimize_for_inference(copy.deepcopy(model).bfloat16(), x.bfloat16())


def test_the_result_is_in_eval_mode_and_refuses_to_train(small_net):
    model, x = small_net
    optimized = tb.optimize_for_inference(model, x)
    assert isinstance(optimized, InferenceModule) and not any(m.training for m in optimized.modules())
    assert optimized.eval() is optimized
    with pytest.raises(NotImplementedError, match=r"Residual \(optimize_for_inference\) is inference-only"):
        optimized.train()


def test_a_shared_relu_module_is_left_untouched():
    x = torch.randn(2, 4, 6, 6)
    model = calibrate(SharedReLU(4), x)
    optimized = tb.optimize_for_inference(model, x)
    with torch.no_grad():
        _close(optimized(x), model(x), rtol=1e-4)
    assert not model.act.inplace and type(model.act) is nn.ReLU


def test_a_converted_keras_model_with_a_vector_input():
    keras = pytest.importorskip("keras")
    inputs = keras.Input((6,))
    norm = keras.layers.BatchNormalization()
    hidden = norm(keras.layers.Dense(8, activation="relu")(inputs))
    keras_model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    generator = torch.Generator().manual_seed(0)
    gamma, beta, mean = (torch.randn(8, generator=generator).numpy() for _ in range(3))
    norm.set_weights([gamma, beta, mean, torch.rand(8, generator=generator).numpy() + 0.5])
    model = tb.interop.keras.from_keras(keras_model).eval()
    x = torch.randn(4, 6)
    optimized = tb.optimize_for_inference(model, x)
    expected = torch.as_tensor(keras.ops.convert_to_numpy(keras_model(x.numpy(), training=False)))
    _close(optimized(x), expected, rtol=1e-4)


def _check_differential(generated, method):
    model, inputs = generated.model, generated.inputs
    expected, tol = sensitive_reference(generated)
    optimized = tb.optimize_for_inference(model, inputs, method=method)
    with torch.no_grad():
        actual = optimized(*inputs)
    assert float((actual - expected).abs().max()) <= tol
    assert actual.is_contiguous() == expected.is_contiguous() and not actual.requires_grad


@differential(60)
@given(generated=any_model())
def test_default_path_differential(generated):
    """Generated models (shared modules, tied weights, branches, vector and image inputs, Conv1d/3d,
    LeNet heads, squeeze-excitation, every torchblocks layer) through the default path: exact to
    1e-4, eager's layout."""
    _check_differential(generated, "auto")


@differential(25)
@given(generated=any_model())
def test_unpacked_channels_last_path_differential(generated):
    _check_differential(generated, "fuse_bn+channels_last")


@pytest.mark.parametrize("method", ["frozen_torchscript", "channels_last+frozen_torchscript"])
def test_frozen_torchscript_paths_differential(method):
    # Scripting and freezing take about half a second a model: a few examples each.
    given(generated=any_model())(differential(5)(lambda generated: _check_differential(generated, method)))()


class EvalNoOps(nn.Module):
    """Calls that return their input in eval mode: dropout modules and functions, torchvision's
    stochastic depth (EfficientNet's residual branches)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.drop = nn.Dropout2d(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import stochastic_depth

        y = stochastic_depth(self.drop(self.conv(x)), 0.2, "row", self.training)
        return F.dropout(y, 0.5, self.training) + x


def test_calls_that_do_nothing_in_eval_mode_leave_the_graph():
    x = torch.randn(2, 3, 8, 8)
    model = EvalNoOps().eval()
    optimized = tb.optimize_for_inference(model, x)
    graph = optimized.module.graph
    assert [n.op for n in graph.nodes if n.op not in ("placeholder", "output")] == ["call_module", "call_method"]
    with torch.no_grad():
        _close(optimized(x), model(x), rtol=1e-4)

"""Export of every public module: TorchScript (script, trace, save/load, a process without
torchblocks), torch.export (dynamic batch, .pt2), ONNX (onnxruntime) and torch.compile.

The oracle is the eager module in eval mode; BatchNorm statistics come from a real batch, so a
wrong export cannot hide behind default (identity) statistics.
"""
import os
import subprocess
import sys
import textwrap
import warnings
from typing import Callable, Dict, Tuple

import pytest
import torch
from hypothesis import given
from torch import nn

import torchblocks as tb
from torchblocks import export as tbe
from torchblocks import models
from generated_models import any_model, differential, sensitive_reference
from reliability_cases import calibrate

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")

Case = Tuple[Callable[[], nn.Module], Tuple[int, ...]]

# One constructor and input shape per public module class (tb.__all__); a class missing here fails
# test_every_public_module_has_a_case. Odd sizes and stride 2 exercise Keras' asymmetric 'same'.
LAYER_CASES: Dict[str, Case] = {
    "AvgPool2d": (lambda: tb.AvgPool2d(3, 2, "same"), (2, 4, 10, 10)),
    "BatchNorm": (lambda: tb.BatchNorm(4), (2, 4, 6, 6)),
    "Conv2d": (lambda: tb.Conv2d(4, 6, 3, stride=2, padding="same", activation="relu"), (2, 4, 10, 10)),
    "ConvBN": (lambda: tb.ConvBN(4, 6, 3, padding="same"), (2, 4, 7, 7)),
    "Dense": (lambda: tb.Dense(5, 3, activation="tanh"), (2, 5)),
    "DenseBN": (lambda: tb.DenseBN(5, 3), (2, 5)),
    "DepthwiseConv2d": (lambda: tb.DepthwiseConv2d(4, 3, 2, "same", depth_multiplier=2), (2, 4, 9, 9)),
    "DownsamplingResidualBlock": (lambda: tb.DownsamplingResidualBlock(4, 8), (2, 4, 8, 8)),
    "GlobalAvgPool2d": (lambda: tb.GlobalAvgPool2d(keepdims=True), (2, 4, 5, 6)),
    "GlobalMaxPool2d": (lambda: tb.GlobalMaxPool2d(), (2, 4, 5, 6)),
    "IdentityResidualBlock": (lambda: tb.IdentityResidualBlock(4), (2, 4, 7, 7)),
    "MaxPool2d": (lambda: tb.MaxPool2d(3, 2, "same"), (2, 4, 10, 10)),
    "Projection": (lambda: tb.Projection(4, 8, stride=2, norm=True), (2, 4, 9, 9)),
    "Residual": (lambda: tb.Residual(tb.SeparableConv2d(4, 4, 3, padding="same")), (2, 4, 7, 7)),
    "SeparableConv2d": (lambda: tb.SeparableConv2d(4, 8, 5, stride=2, padding="same"), (2, 4, 10, 10)),
    "SyncBatchNorm": (lambda: tb.SyncBatchNorm(4, axis=-1), (2, 5, 6, 4)),
}

# Small inputs (the models' minimum sizes) and few classes keep every export cheap.
MODEL_INPUTS: Dict[str, Tuple[int, ...]] = {
    "SeparableConvNet": (2, 3, 32, 32),
    "xception": (2, 3, 71, 71),
    "resnet18": (2, 3, 32, 32),
    "resnet34": (2, 3, 32, 32),
    "resnet50": (2, 3, 32, 32),
    "resnet101": (2, 3, 32, 32),
    "resnet152": (2, 3, 32, 32),
}
MODEL_NAMES = list(models.MODEL_NAMES)
LAYER_NAMES = sorted(LAYER_CASES)
ONNX_LAYERS = ["Conv2d", "SeparableConv2d", "MaxPool2d", "AvgPool2d", "Projection", "Residual"]


def _public_module_names():
    return sorted(
        name for name in tb.__all__
        if isinstance(getattr(tb, name), type) and issubclass(getattr(tb, name), nn.Module)
    )


def _layer(name):
    factory, shape = LAYER_CASES[name]
    x = torch.randn(shape)
    return calibrate(factory(), x), x


@pytest.fixture(scope="module", params=MODEL_NAMES)
def model_case(request):
    torch.manual_seed(0)
    shape = MODEL_INPUTS[request.param]
    kwargs = {} if request.param == "SeparableConvNet" else {"num_classes": 10}
    x = torch.randn(shape)
    return request.param, calibrate(models.get_model(request.param, **kwargs), x), x


def test_every_public_module_has_a_case():
    assert sorted(set(_public_module_names()) - set(LAYER_CASES)) == []


def test_every_model_has_a_case():
    assert sorted(set(MODEL_NAMES) - set(MODEL_INPUTS)) == []
    # Every public model class (blocks included) is part of a model built by name, so the model
    # cases script, trace and export it.
    classes = {n for n in models.__all__ if isinstance(getattr(models, n), type) and issubclass(getattr(models, n), nn.Module)}
    built = {type(m).__name__ for n in MODEL_NAMES for m in models.get_model(n, num_classes=2).modules()}
    assert sorted(classes - built) == []


def _check_script_and_trace(model: nn.Module, x: torch.Tensor, tmp_path) -> None:
    with torch.no_grad():
        expected = model(x)
    for method in tbe.METHODS:
        loaded = tbe.to_torchscript(model, tmp_path / f"{method}.pt", x, method=method)  # reloaded file
        assert isinstance(loaded, torch.jit.RecursiveScriptModule)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_layer_scripts_traces_and_round_trips(name, tmp_path):
    model, x = _layer(name)
    _check_script_and_trace(model, x, tmp_path)


def test_model_scripts_traces_and_round_trips(model_case, tmp_path):
    _, model, x = model_case
    _check_script_and_trace(model, x, tmp_path)


def test_scripted_same_padding_follows_the_input_size(tmp_path):
    # Script keeps the per-call Keras 'same' computation: a new size still gets ceil(n / s).
    model, x = _layer("SeparableConv2d")
    scripted = tbe.to_torchscript(model, tmp_path / "s.pt", x)
    other = torch.randn(2, 4, 13, 13)
    with torch.no_grad():
        out = scripted(other)
        torch.testing.assert_close(out, model(other), rtol=1e-5, atol=1e-5)
    assert out.shape == (2, 8, 7, 7)


def test_saved_torchscript_runs_without_torchblocks(tmp_path):
    model, x = _layer("DownsamplingResidualBlock")
    tbe.to_torchscript(model, tmp_path / "block.pt", x)
    torch.save({"x": x, "y": model(x).detach()}, tmp_path / "io.pt")
    child = textwrap.dedent(
        """
        import sys
        sys.modules["torchblocks"] = None  # any import of torchblocks now fails
        import torch
        try:
            import torchblocks
        except ImportError:
            pass
        else:
            raise SystemExit("torchblocks is importable")
        io = torch.load("io.pt")
        y = torch.jit.load("block.pt")(io["x"])
        print("maxerr", float((y - io["y"]).abs().max()))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-I", "-W", "ignore", "-c", child], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split()[-1]) <= 1e-5


def test_optimized_torchscript_is_frozen_and_matches(tmp_path):
    model, x = _layer("Projection")
    optimized = tbe.to_torchscript(model, tmp_path / "p.pt", x, optimize=True)
    saved = torch.jit.load(str(tmp_path / "p.pt"))
    # Freezing turns the parameters into constants: nothing trainable remains.
    assert list(saved.parameters()) == []
    with torch.no_grad():
        torch.testing.assert_close(optimized(x), model(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(saved(x), model(x), rtol=1e-4, atol=1e-4)


def test_training_model_is_exported_in_eval_mode_and_left_untouched(tmp_path):
    model, x = _layer("ConvBN")
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="ConvBN is in training mode; exporting an eval-mode copy"):
        scripted = tbe.to_torchscript(model, None, x)
    assert model.training and all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not scripted.training
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model.eval()(x), rtol=1e-5, atol=1e-5)


class _DivergesScripted(nn.Module):
    """Adds 0.5 once scripted: a stand-in for an export that changes the numerics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return x + 0.5
        return x


class _DivergesExported(nn.Module):
    """Adds 0.5 under torch.export (which the ONNX exporter uses too)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            return x + 0.5
        return x


@pytest.mark.parametrize("export", ["script", "exported", "onnx"])
def test_verification_failure_names_module_and_error(export, tmp_path):
    x = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match=r"of _Diverges\w+ does not match eager mode: max abs error 0\.5"):
        if export == "script":
            tbe.to_torchscript(_DivergesScripted().eval(), None, x)
        elif export == "exported":
            tbe.to_exported(_DivergesExported().eval(), None, x)
        else:
            tbe.to_onnx(_DivergesExported().eval(), tmp_path / "d.onnx", x)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"method": "compile"}, ValueError, r"argument `method`.*Received method='compile'"),
        ({"method": "trace", "example_inputs": None}, ValueError, r"method='trace' needs example inputs"),
        ({"path": "/nonexistent-dir/m.pt"}, ValueError, r"argument `path`.*'/nonexistent-dir/m.pt'"),
        ({"example_inputs": [1, 2]}, TypeError, r"argument `example_inputs`"),
    ],
)
def test_to_torchscript_rejects_bad_arguments(kwargs, error, match):
    args = {"path": None, "example_inputs": torch.randn(2, 4, 6, 6), **kwargs}
    with pytest.raises(error, match=match):
        tbe.to_torchscript(tb.BatchNorm(4).eval(), **args)


def test_model_exports_with_dynamic_batch(model_case):
    # to_exported checks batches 2 and 3 itself; batch 1 here is an independent check.
    _, model, x = model_case
    program = tbe.to_exported(model, None, x)
    xb = torch.randn(1, *x.shape[1:])
    with torch.no_grad():
        torch.testing.assert_close(program.module()(xb), model(xb), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["SeparableConvNet", "resnet18"])
def test_pt2_save_load_round_trip(name, tmp_path):
    x = torch.randn(2, 3, 32, 32)
    model = calibrate(models.get_model(name, num_classes=10), x)
    tbe.to_exported(model, tmp_path / "m.pt2", x)
    runnable = torch.export.load(str(tmp_path / "m.pt2")).module()
    xb = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(runnable(xb), model(xb), rtol=1e-5, atol=1e-5)


def test_export_from_a_batch_of_one_is_still_dynamic():
    model, x = _layer("SeparableConv2d")
    program = tbe.to_exported(model, None, x[:1])
    xb = torch.randn(5, *x.shape[1:])
    with torch.no_grad():
        torch.testing.assert_close(program.module()(xb), model(xb), rtol=1e-5, atol=1e-5)


def test_to_exported_needs_example_inputs():
    with pytest.raises(ValueError, match="torch.export needs example inputs"):
        tbe.to_exported(tb.BatchNorm(4).eval())


@pytest.mark.parametrize("name", ONNX_LAYERS)
def test_layer_onnx_matches_onnxruntime(name, tmp_path):
    pytest.importorskip("onnxruntime")
    model, x = _layer(name)
    tbe.to_onnx(model, tmp_path / f"{name}.onnx", x)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    xb = torch.randn(3, *x.shape[1:])
    (out,) = session.run(None, {"input_0": xb.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model(xb), rtol=1e-4, atol=1e-4)


def test_onnx_keeps_keras_asymmetric_same_padding(tmp_path):
    pytest.importorskip("onnx")
    # k=3, s=2 on 10 pixels: Keras pads 0 before and 1 after (the extra pixel bottom/right).
    model = tb.Conv2d(2, 3, 3, stride=2, padding="same").eval()
    proto = tbe.to_onnx(model, tmp_path / "c.onnx", torch.randn(2, 2, 10, 10))
    pads = [
        list(attr.ints) for node in proto.graph.node if node.op_type == "Conv"
        for attr in node.attribute if attr.name == "pads"
    ]
    pad_nodes = [node for node in proto.graph.node if node.op_type == "Pad"]
    assert pads == [[0, 0, 1, 1]] or pad_nodes, (pads, [n.op_type for n in proto.graph.node])


def test_model_onnx_matches_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    x = torch.randn(2, 3, 32, 32)
    model = calibrate(models.SeparableConvNet(), x)
    proto = tbe.to_onnx(model, tmp_path / "net.onnx", x)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param != ""  # dynamic batch


@pytest.mark.slow
@pytest.mark.parametrize("name", LAYER_NAMES)
def test_layer_compiles_without_graph_breaks(name):
    # backend="eager" runs dynamo's capture (fullgraph=True fails on any graph break) without
    # paying for code generation; one model below goes through inductor.
    torch._dynamo.reset()
    model, x = _layer(name)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_model_compiles_with_inductor():
    # Inductor on one model keeps the suite short; every model goes through dynamo capture below.
    torch._dynamo.reset()
    x = torch.randn(2, 3, 32, 32)
    model = calibrate(models.SeparableConvNet(), x)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_model_dynamo_captures_without_graph_breaks(model_case):
    _, model, x = model_case
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_torchscript_adds_no_warning_of_its_own():
    model, x = _layer("BatchNorm")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tbe.to_torchscript(model, None, x)
    ours = [w for w in caught if "torchblocks" in str(w.filename)]
    assert ours == []


EXPORTERS = {
    "torchscript": lambda model, path, x: tbe.to_torchscript(model, path, x),
    "exported": lambda model, path, x: tbe.to_exported(model, path, x),
    "onnx": lambda model, path, x: tbe.to_onnx(model, path, x),
}


@pytest.mark.parametrize("fmt", sorted(EXPORTERS))
def test_an_optimised_module_is_refused_with_the_way_out(fmt, tmp_path):
    model, x = _layer("Projection")
    optimized = tb.optimize_for_inference(model, x)
    assert not optimized.training  # no "is in training mode" warning on the way to the refusal
    exporter = {"torchscript": "to_torchscript", "exported": "to_exported", "onnx": "to_onnx"}[fmt]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(TypeError, match=rf"{exporter}: InferenceModule is the optimised inference module of "
                                            rf"Projection.*Export the model itself"):
            EXPORTERS[fmt](optimized, tmp_path / "m", x)
        # Held inside another model, or taken out of its wrapper: still refused, by its place.
        with pytest.raises(TypeError, match=rf"{exporter}: Sequential.0.proj is a conv packed for oneDNN"):
            EXPORTERS[fmt](nn.Sequential(optimized.module), tmp_path / "m", x)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fmt", sorted(EXPORTERS))
def test_a_failed_verification_leaves_no_file_and_an_old_file_untouched(fmt, tmp_path):
    path = tmp_path / f"model.{fmt}"
    path.write_bytes(b"the previous export")
    model = _DivergesScripted() if fmt == "torchscript" else _DivergesExported()
    with pytest.raises(RuntimeError, match="does not match eager mode"):
        EXPORTERS[fmt](model.eval(), path, torch.randn(2, 3))
    assert os.listdir(tmp_path) == [path.name] and path.read_bytes() == b"the previous export"


class _DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x


def test_a_failed_onnx_export_says_why_in_plain_text(tmp_path):
    with pytest.raises(NotImplementedError, match=r"to_onnx: _DataDependent cannot be exported to ONNX: Failed to "
                                                  r"export the model with torch.export.*data-dependent") as caught:
        tbe.to_onnx(_DataDependent().eval(), tmp_path / "d.onnx", torch.randn(2, 3))
    assert "\x1b" not in str(caught.value)
    assert os.listdir(tmp_path) == []


def _check_export_differential(generated, export, tmp_path):
    model, inputs = generated.model, generated.inputs
    expected, tol = sensitive_reference(generated)
    runnable = export(model, inputs, tmp_path)
    with torch.no_grad():
        assert float((runnable(*inputs) - expected).abs().max()) <= tol


# exporter -> (examples, how to get a runnable module from it): torch.export and ONNX take seconds.
EXPORT_DIFFERENTIAL = {
    "script": (12, lambda model, inputs, tmp: tbe.to_torchscript(model, tmp / "m.pt", inputs)),
    "trace": (12, lambda model, inputs, tmp: tbe.to_torchscript(model, tmp / "m.pt", inputs, method="trace")),
    "exported": (5, lambda model, inputs, tmp: tbe.to_exported(model, tmp / "m.pt2", inputs).module()),
}


@pytest.mark.parametrize("name", sorted(EXPORT_DIFFERENTIAL))
def test_exporters_differential(name, tmp_path):
    """Generated models (shared modules, tied weights, branches, vector and image inputs, Conv1d/3d,
    every torchblocks layer): each exporter's reloaded file equals eager mode."""
    examples, export = EXPORT_DIFFERENTIAL[name]
    check = differential(examples)(lambda generated: _check_export_differential(generated, export, tmp_path))
    given(generated=any_model())(check)()


def test_onnx_differential(tmp_path):
    pytest.importorskip("onnxruntime")
    # to_onnx checks onnxruntime against eager mode itself; it takes several seconds a model.
    check = differential(2)(lambda generated: _check_export_differential(
        generated, lambda model, inputs, tmp: (tbe.to_onnx(model, tmp / "m.onnx", inputs), model)[1], tmp_path))
    given(generated=any_model())(check)()

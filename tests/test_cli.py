"""The ``torchblocks`` command: the default ``compare`` run, formats, plot, summary, bad input.

Commands run in-process through ``main([...])``; one test runs the real console module in a
subprocess to check the exit status a shell sees.
"""
import contextlib
import csv
import io
import json
import logging
import os
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import torchblocks as tb
from torchblocks.cli import main

REPO = Path(__file__).resolve().parents[1]
CHANNELS = (32, 64, 128, 256, 512)
KERNELS = (3, 5, 7)
STRIDES = (1, 2)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Counting traces thousands of small ops: on 2 shared cores one intra-op thread avoids the
    threads spin-waiting on each other. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def run(argv):
    """(exit status, stdout, stderr, log records at WARNING or above, Python warnings)."""
    out, err, handler = io.StringIO(), io.StringIO(), _Records()
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            warnings.simplefilter("always")
            status = main(argv)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    logged = [r for r in handler.records if r.levelno >= logging.WARNING]
    return status, out.getvalue(), err.getvalue(), logged, list(caught)


@pytest.fixture(scope="module")
def default_run():
    """``torchblocks compare --format json``: the default job, once for the module."""
    return run(["compare", "--format", "json"])


def sep_macs(c_in, c_out, n):
    return 9 * c_in * n * n + c_in * c_out * n * n + c_out * n * n  # depthwise + pointwise + ReLU


def std_macs(c_in, c_out, n):
    return 9 * c_in * c_out * n * n + c_out * n * n


def book_model(conv):
    """MACs of the book's model (1×3×64×64) with ``conv`` layers, written out layer by layer."""
    total = conv(3, 32, 62) + conv(32, 64, 60) + 4 * 64 * 30 * 30
    total += conv(64, 64, 28) + conv(64, 128, 26) + 4 * 128 * 13 * 13
    total += conv(128, 64, 11) + conv(64, 128, 9) + 128 * 81
    return total + 128 * 32 + 32 + 32 * 10


ROW_KEYS = {
    "name", "counterpart", "input_shape", "params", "counterpart_params", "params_ratio", "macs",
    "counterpart_macs", "flops", "counterpart_flops", "macs_ratio", "theoretical_ratio",
    "latency_ms", "counterpart_latency_ms", "time_ratio", "replaced", "note",
}


@pytest.mark.slow
def test_default_run_json_schema_values_and_no_warnings(default_run):
    status, out, err, logged, caught = default_run
    assert status == 0, err
    assert logged == [], [r.getMessage() for r in logged]
    assert [str(w.message) for w in caught] == []
    document = json.loads(out)
    assert set(document) == {"convention", "layers", "models"}
    assert document["convention"]["flops"] == "2 * macs"

    layers = document["layers"]
    assert [r["name"] for r in layers] == [
        f"C={c} k={k} s={s}" for c in CHANNELS for k in KERNELS for s in STRIDES]
    for row in layers:
        assert set(row) == ROW_KEYS
        _, c, h, w = row["input_shape"]
        k, s = int(row["name"].split()[1][2:]), int(row["name"].split()[2][2:])
        ho, wo = -(-h // s), -(-w // s)  # Keras 'same'
        assert (h, w) == (56, 56)
        assert row["macs"] == c * k * k * ho * wo + c * c * ho * wo
        assert row["counterpart_macs"] == c * c * k * k * ho * wo
        assert row["flops"] == 2 * row["macs"]
        assert row["params"] == k * k * c + c * c + c and row["counterpart_params"] == k * k * c * c + c
        assert row["theoretical_ratio"] == pytest.approx(1 / c + 1 / (k * k), rel=1e-12)
        assert row["macs_ratio"] == pytest.approx(row["theoretical_ratio"], rel=1e-12)
        assert row["latency_ms"] is None

    models = {r["name"]: r for r in document["models"]}
    assert list(models) == ["SeparableConvNet", "xception", 'resnet50(conv="separable")']
    book = models["SeparableConvNet"]
    assert set(book) == ROW_KEYS
    assert (book["params"], book["counterpart_params"]) == (38_949, 282_282)  # Keras count_params()
    assert book["macs"] == book_model(sep_macs) == 21_153_228
    assert book["counterpart_macs"] == book_model(std_macs)
    assert book["macs_ratio"] == pytest.approx(book["macs"] / book["counterpart_macs"], rel=1e-12)
    assert book["input_shape"] == [1, 3, 64, 64] and book["counterpart"] == "standard_counterpart"
    xception = models["xception"]
    assert xception["input_shape"] == [1, 3, 299, 299]
    assert xception["params"] == 22_855_952  # Keras Applications Xception, trainable weights
    resnet = models['resnet50(conv="separable")']
    assert resnet["counterpart"] == 'resnet50(conv="standard")'
    assert resnet["counterpart_params"] == 25_557_032  # torchvision resnet50
    assert resnet["input_shape"] == [1, 3, 224, 224]
    assert 0 < resnet["macs_ratio"] < 1 and 0 < xception["macs_ratio"] < 0.2


FORMAT_CHECKS = {
    "text": ("MACs sep", "38,949", "21.2M", "164M", "FLOPs = 2 x MACs"),
    "markdown": ("| model | input |", "| SeparableConvNet | 1x3x64x64 |", "---:"),
    "csv": ("section,name,counterpart,input_shape,params,", "model,SeparableConvNet,standard_counterpart,"
            "1x3x64x64,38949,282282,"),
}


@pytest.mark.parametrize("fmt", sorted(FORMAT_CHECKS))
def test_compare_one_model_in_each_format(fmt):
    status, out, err, logged, _ = run(["compare", "--model", "separableCONVnet", "--format", fmt])
    assert status == 0, err
    assert logged == []
    for snippet in FORMAT_CHECKS[fmt]:
        assert snippet in out
    assert "C=32" not in out  # --model: no layer grid


def test_compare_layer_grid_csv_exact_values():
    status, out, err, _, _ = run(["compare", "--only", "layers", "--channels", "8", "16",
                                  "--kernel-sizes", "5", "--input-size", "3", "9", "10",
                                  "--format", "csv"])
    assert status == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["name"] for r in rows] == ["C=8 k=5 s=1", "C=8 k=5 s=2", "C=16 k=5 s=1", "C=16 k=5 s=2"]
    for row in rows:
        c, s = int(row["name"].split()[0][2:]), int(row["name"][-1])
        positions = -(-9 // s) * -(-10 // s)
        assert row["section"] == "layer" and row["input_shape"] == f"1x{c}x9x10"
        assert int(row["macs"]) == positions * (c * 25 + c * c)
        assert int(row["counterpart_macs"]) == positions * c * c * 25
        assert int(row["flops"]) == 2 * int(row["macs"])


def test_compare_latency_and_plot(tmp_path):
    path = tmp_path / "sweep.png"
    status, out, err, _, _ = run(["compare", "--only", "layers", "--channels", "8", "16",
                                  "--kernel-sizes", "3", "--input-size", "3", "16", "16",
                                  "--latency", "--repeats", "3", "--plot", str(path)])
    assert status == 0, err
    assert "ms sep" in out and "time sep/std" in out and "speed-up" not in out
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    import matplotlib.image

    image = matplotlib.image.imread(str(path))
    assert image.shape == (400, 1000, 4)  # figsize (10, 4) at 100 dpi, RGBA
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_version_and_help_texts():
    status, out, err, _, _ = run(["--version"])
    assert (status, out, err) == (0, f"torchblocks {tb.__version__}\n", "")
    for argv in (["--help"], ["compare", "--help"], ["summary", "--help"]):
        status, out, _, _, _ = run(argv)
        assert status == 0 and out.startswith("usage: torchblocks")
        assert "``" not in out and ":mod:" not in out  # no raw reStructuredText


def test_summary_of_a_model_of_ones_own(tmp_path, monkeypatch):
    (tmp_path / "user_nets.py").write_text(
        "import torchblocks as tb\n\ndef build():\n    return tb.SeparableConv2d(3, 8, 3)\n")
    monkeypatch.chdir(tmp_path)
    status, out, err, _, _ = run(["summary", "user_nets:build", "--input-size", "3", "10", "10"])
    assert status == 0, err
    assert 'Model: "SeparableConv2d", input (1, 3, 10, 10)' in out and "Total params: 59" in out
    status, out, err, _, _ = run(["summary", "user_nets:build"])
    assert status == 2 and "user_nets:build: give its input size with --input-size C H W" in err


def test_summary_command_text_and_json():
    status, out, err, _, _ = run(["summary", "SeparableConvNet", "--input-size", "3", "64", "64"])
    assert status == 0, err
    assert 'Model: "SeparableConvNet", input (1, 3, 64, 64)' in out
    assert "features.sepconv1 (SeparableConv2d)" in out and "(1, 32, 62, 62)" in out
    assert "Total params: 38,949" in out and "Total MACs: 21,153,228" in out
    status, out, err, _, _ = run(["summary", "separableconvnet", "--format", "json", "--depth", "1"])
    assert status == 0, err
    document = json.loads(out)
    assert document["input_shape"] == [1, 3, 64, 64]  # the book's input size by default
    assert document["totals"]["params"] == 38_949 and document["totals"]["flops"] == 2 * 21_153_228
    assert [r["layer"] for r in document["layers"]] == [
        "features (Sequential)", "pool (GlobalAvgPool2d)", "fc1 (Dense)", "fc2 (Dense)"]
    assert sum(r["macs"] for r in document["layers"]) == 21_153_228


BAD_INPUT = [
    (["compare", "--model", "nope"], "unknown model 'nope'"),
    (["summary", "nope"], "unknown model 'nope'"),
    (["compare", "--input-size", "3", "a", "4"], "expected a positive integer, received 'a'"),
    (["compare", "--input-size", "3", "0", "4"], "expected a positive integer, received '0'"),
    (["summary", "xception", "--input-size", "3", "64"], "expected 3 arguments"),
    (["summary", "xception", "--input-size", "3", "20", "20"], "at least 71x71 pixels"),
    (["compare", "--format", "xml"], "invalid choice: 'xml'"),
    (["compare", "--model", "xception", "--plot", "x.png"], "--plot draws the single-layer grid"),
    (["compare", "--model", "xception", "--only", "layers"], "not allowed with argument"),
    ([], "required: COMMAND"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUT)
def test_bad_input_is_one_line_and_nonzero(argv, message):
    status, out, err, _, _ = run(argv)
    assert status != 0
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("torchblocks"), err
    assert message in err and "Traceback" not in err


class _Untraceable(nn.Module):
    """Holds a SeparableConv2d but returns a Python float: the JIT tracer cannot record it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = tb.SeparableConv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> float:
        return float(self.conv(x).sum())


def test_untraceable_model_is_one_line_error(monkeypatch):
    import torchblocks.models

    monkeypatch.setattr(torchblocks.models, "get_model", lambda name, **kwargs: _Untraceable())
    status, out, err, _, _ = run(["compare", "--model", "xception", "--input-size", "3", "8", "8"])
    assert status == 1
    assert err.startswith("torchblocks compare: error: fvcore could not trace _Untraceable: ")
    assert err.count("\n") == 1


def test_module_entry_point_exits_nonzero_on_bad_input():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torchblocks", "compare", "--model", "nope"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("torchblocks compare: error: unknown model 'nope'")
    assert result.stderr.count("\n") == 1


def test_compare_flops_script_runs_the_compare_command(monkeypatch, capsys):
    script = str(REPO / "scripts" / "compare_flops.py")
    monkeypatch.setattr(sys, "argv", [script, "--model", "SeparableConvNet", "--format", "json"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(script, run_name="__main__")
    assert info.value.code == 0
    (row,) = json.loads(capsys.readouterr().out)["models"]
    assert (row["name"], row["params"], row["macs"]) == ("SeparableConvNet", 38_949, 21_153_228)


@pytest.mark.parametrize("fmt, suffix", [("torchscript", "pt"), ("exported", "pt2"), ("onnx", "onnx")])
def test_cli_export_writes_a_verified_file(fmt, suffix, tmp_path, capsys):
    out = tmp_path / f"net.{suffix}"
    code = main(["export", "SeparableConvNet", "--out", str(out), "--format", fmt, "--input-size", "3", "32", "32"])
    assert code == 0
    assert out.stat().st_size > 0
    assert "verified against eager" in capsys.readouterr().out


# argv -> (exit status: 2 for a malformed command line, 1 for a failure; message)
EXPORT_ERRORS = [
    (["SeparableConvNet", "--out", "{tmp}/n.pt", "--format", "keras"], 2, "argument --format: invalid choice: 'keras'"),
    (["SeparableConvNet", "--out", "/nonexistent-dir/n.pt"], 1, "argument `path`"),
    (["SeparableConvNet", "--out", "{tmp}"], 1, "Expected a file, not a directory"),
    (["NoSuchNet", "--out", "{tmp}/n.pt"], 2, "unknown model 'NoSuchNet'"),
    (["SeparableConvNet", "--out", "{tmp}/n.pt", "--batch", "0"], 2, "expected a positive integer, received '0'"),
]


@pytest.mark.parametrize("argv, status, match", EXPORT_ERRORS)
def test_cli_export_bad_input_is_a_one_line_error(argv, status, match, tmp_path, capsys):
    code = main(["export", *[a.format(tmp=tmp_path) for a in argv]])
    err = capsys.readouterr().err
    assert code == status
    assert len(err.strip().splitlines()) == 1 and match in err


def test_cli_export_model_names_are_case_insensitive(tmp_path, capsys):
    assert main(["export", "separableconvnet", "--out", str(tmp_path / "n.pt"), "--input-size", "3", "32", "32"]) == 0
    assert "SeparableConvNet" in capsys.readouterr().out


def test_export_script_runs(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "export_torchscript.py")
    result = subprocess.run(
        [sys.executable, "-W", "ignore", script, "SeparableConvNet", "--out", str(tmp_path / "n.pt")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    loaded = torch.jit.load(str(tmp_path / "n.pt"))
    assert loaded(torch.randn(1, 3, 32, 32)).shape == (1, 10)

"""``torchblocks compare``: progress on stderr only, tables that fit 100 columns, honest ratio
names, blank cells that explain themselves, a model of one's own (``module:attribute``), and a
``--plot`` path checked before the run."""
import contextlib
import io
import json

import pytest
import torch

from torchblocks.cli import main

SMALL_GRID = ["--only", "layers", "--channels", "8", "512", "--kernel-sizes", "3", "7",
              "--input-size", "3", "12", "12"]


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, as tqdm checks before drawing a bar."""

    def isatty(self) -> bool:
        return True


def run(argv, stderr=None):
    """(exit status, stdout, stderr)."""
    out, err = io.StringIO(), stderr if stderr is not None else io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_progress_is_drawn_on_a_terminal_stderr_only():
    status, out, err = run(["compare", *SMALL_GRID, "--format", "csv"], stderr=_Terminal())
    assert status == 0
    assert "counting" in err and "net" in err
    assert "counting" not in out and "\r" not in out and out.startswith("section,name,")
    status, out, err = run(["compare", *SMALL_GRID, "--no-progress"], stderr=_Terminal())
    assert status == 0 and err == ""
    status, out, err = run(["compare", *SMALL_GRID, "--format", "json"])  # not a terminal
    assert status == 0 and err == "" and json.loads(out)["layers"]


@pytest.mark.parametrize("extra", [[], ["--latency", "--repeats", "2"]], ids=["counts", "latency"])
def test_default_tables_fit_100_columns_and_wide_restores_every_column(extra):
    argv = ["compare", "--no-progress", "--only", "layers", "--channels", "512", "--kernel-sizes", "7",
            "--input-size", "3", "8", "8", *extra]
    status, out, _ = run(argv)
    assert status == 0
    assert max(len(line) for line in out.splitlines()) <= 100, out
    assert "speed-up" not in out
    status, wide, _ = run([*argv, "--wide"])
    assert status == 0 and "params sep" in wide and "params std" in wide
    if extra:
        assert "ms sep" in out and "time sep/std" in out and "params sep" not in out
        assert "time sep/std > 1: the separable version is SLOWER" in out
        assert "depthwise convs are memory-bound" in out


def test_plot_explains_its_blank_cells_and_checks_its_path_first(tmp_path):
    path = tmp_path / "sweep.png"
    status, out, _ = run(["compare", "--no-progress", *SMALL_GRID, "--repeats", "2", "--plot", str(path)])
    assert status == 0 and path.read_bytes()[:4] == b"\x89PNG"
    rows = [line for line in out.splitlines() if line.startswith("C=")]
    assert [line.split()[-1] == "-" for line in rows] == [False, True, True, True, False, True, True, True]
    assert "-: not timed; --plot times only the k=3 stride-1 rows (--latency times every row)" in out
    # A path that cannot be written is refused before anything is counted.
    for bad, message in ((tmp_path, "Expected a file, not a directory"),
                         (tmp_path / "no" / "p.png", "existing, writable folder"),
                         (tmp_path / "p.txt", "Expected a file name ending in one of")):
        status, out, err = run(["compare", *SMALL_GRID, "--plot", str(bad)])
        assert status == 1 and out == "" and err.count("\n") == 1 and message in err


USER_MODULE = '''
import torch
from torch import nn

import torchblocks as tb


def build():
    return nn.Sequential(tb.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.BatchNorm2d(8),
                         nn.ReLU(), nn.Conv2d(8, 16, 1))


NET = build()
NOT_A_MODEL = 3


def plain():
    return nn.Sequential(nn.Conv2d(3, 4, 3))


def broken():
    raise RuntimeError("no weights here")
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "compare_user_nets.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    return "compare_user_nets"


@pytest.mark.parametrize("attribute", ["build", "NET"])
def test_a_model_of_ones_own(user_module, attribute):
    spec = f"{user_module}:{attribute}"
    status, out, err = run(["compare", "--model", spec, "--input-size", "3", "12", "12", "--format", "json"])
    assert status == 0, err
    (row,) = json.loads(out)["models"]
    assert row["name"] == spec and row["counterpart"] == "standard_counterpart"
    # The depthwise conv, BN, ReLU and 1×1 conv are one pair: a full 3×3 conv 8 -> 16 on 8×8.
    assert row["counterpart_macs"] == 8 * 3 * 9 * 100 + 16 * 8 * 9 * 64
    assert row["replaced"] == ["1 + 4: depthwise 3x3 + pointwise 8->16 -> full 3x3 conv 8->16"]


SPEC_ERRORS = [
    (["--model", "nope:", "--input-size", "3", "8", "8"], 2, "expected a torchblocks model name or MODULE:ATTRIBUTE"),
    (["--model", "a:b:c", "--input-size", "3", "8", "8"], 2, "expected a torchblocks model name or MODULE:ATTRIBUTE"),
    (["--model", "{m}:build"], 2, "{m}:build: give its input size with --input-size C H W"),
    (["--model", "no_such_module_x:build", "--input-size", "3", "8", "8"], 1,
     "cannot import 'no_such_module_x': No module named 'no_such_module_x'"),
    (["--model", "{m}:missing", "--input-size", "3", "8", "8"], 1, "'{m}' has no attribute 'missing'"),
    (["--model", "{m}:NOT_A_MODEL", "--input-size", "3", "8", "8"], 1, "expected an nn.Module (or a function returning one); received int"),
    (["--model", "{m}:broken", "--input-size", "3", "8", "8"], 1, "calling broken() failed: RuntimeError: no weights here"),
    (["--model", "{m}:plain", "--input-size", "3", "8", "8"], 1, "has no SeparableConv2d and no depthwise or grouped convolution"),
]


@pytest.mark.parametrize("argv, status, message", SPEC_ERRORS)
def test_bad_model_specs_are_one_line_errors(user_module, argv, status, message):
    code, out, err = run(["compare", *[a.format(m=user_module) for a in argv]])
    assert code == status and out == ""
    assert err.count("\n") == 1 and message.format(m=user_module) in err, err

"""The benchmark harness runs and reports; speed itself is measured by `torchblocks bench`, not here."""
import json
import math
import sys
import types

import pytest
import torch
import torch.utils.benchmark

from torchblocks import bench
from torchblocks.bench import Case, time_pair
from torchblocks.bench.memory import peak_tensor_mib
from torchblocks.cli import main

CASE_FIELDS = {"name", "candidate", "reference", "candidate_ms", "reference_ms", "ratio", "target",
               "higher_is_better", "note", "met"}
EXPECTED_CASES = (
    "SeparableConv2d same s1 (eager)",
    "Conv2d same s1 (eager)",
    "BatchNorm eval (eager)",
    "Residual identity (eager)",
    "A/A control",
    "Conv2d same s2",
    "Separable vs standard",
    "Xception inference N=1",
    "Xception train step",
    "Xception inference peak tensor memory",
    "Xception inference peak RSS growth",
    "SeparableConvNet 32² N=1 vs inductor",
    "SeparableConvNet 32² N=1 build vs inductor",
)


@pytest.mark.parametrize(
    "ratio, target, higher, met",
    [(1.02, 1.03, False, True), (1.04, 1.03, False, False), (5.3, 5.2, True, True), (5.1, 5.2, True, False),
     (0.7, None, False, None)],
)
def test_case_met_reads_the_target_direction(ratio, target, higher, met):
    assert Case("c", "a", "b", 1.0, 1.0, ratio, target, higher).met is met


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_run_writes_valid_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--threads", "1", "--json", str(path)]) == 0
    table = capsys.readouterr().out
    report = json.loads(path.read_text())
    assert report["device"] == "cpu" and report["quick"] is True and report["threads"] == 1
    assert {"torch", "python", "timm", "keras"} <= set(report["environment"])
    names = [case["name"] for case in report["cases"]]
    assert len(set(names)) == len(names), names  # every row tells which comparison it is
    for case in report["cases"]:
        assert f"{case['candidate']} vs {case['reference']}" in table
    for expected in EXPECTED_CASES:
        assert any(name.startswith(expected) for name in names), (expected, names)
        assert expected in table
    for case in report["cases"]:
        assert set(case) == CASE_FIELDS
        for key in ("candidate_ms", "reference_ms", "ratio"):
            assert math.isfinite(case[key]) and case[key] > 0, case
        assert case["met"] is None if case["target"] is None else isinstance(case["met"], bool)


def test_bench_rejects_an_unknown_device(capsys):
    assert main(["bench", "--device", "tpu"]) == 2
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


def test_time_pair_times_on_the_threads_the_run_reports():
    # torch.utils.benchmark.Timer defaults to one thread: the run must keep the ones it states.
    threads = torch.get_num_threads()
    seen = set()
    try:
        torch.set_num_threads(2)
        time_pair(lambda: seen.add(torch.get_num_threads()), lambda: None, rounds=2, min_run_time=0.001)
    finally:
        torch.set_num_threads(threads)
    assert seen == {2}


def _allocates_three_mib_at_most() -> torch.Tensor:
    a = torch.empty(2**18)  # 1 MiB
    b = torch.empty(2**19)  # 2 MiB: 3 MiB alive
    del a
    c = torch.empty(2**18)  # 1 MiB again, after 1 MiB was freed
    return b.sum() + c.sum()


def test_peak_tensor_mib_follows_allocations_and_frees():
    assert peak_tensor_mib(_allocates_three_mib_at_most) == pytest.approx(3.0, abs=1e-3)


class _ScriptedTimer:
    """Stands in for torch.utils.benchmark.Timer: hands out the medians of ``MEDIANS`` in turn."""

    MEDIANS: list = []

    def __init__(self, stmt, globals, num_threads):  # noqa: A002 (Timer's own argument name)
        self.stmt = globals["stmt"]

    def blocked_autorange(self, min_run_time):
        self.stmt()
        return types.SimpleNamespace(median=self.MEDIANS.pop(0))


def test_time_pair_tells_the_sides_apart_by_position_not_identity(monkeypatch):
    # One callable on both sides: rounds alternate candidate-first and reference-first, so the
    # candidate gets the 1st and 4th timing, the reference the 2nd and 3rd.
    monkeypatch.setattr(torch.utils.benchmark, "Timer", _ScriptedTimer)
    _ScriptedTimer.MEDIANS = [1.0, 2.0, 2.0, 1.0]
    calls = []
    fn = lambda: calls.append(1)  # noqa: E731
    cand_ms, ref_ms, ratio = time_pair(fn, fn, rounds=2, min_run_time=0.0)
    assert (cand_ms, ref_ms, ratio) == (1000.0, 2000.0, 0.5)
    assert len(calls) == 2 + 4  # one warm-up call per side, then one per timing


def test_keras_on_another_backend_is_reported_as_such_not_as_missing(monkeypatch):
    fake = types.ModuleType("keras")
    fake.backend = types.SimpleNamespace(backend=lambda: "jax")
    monkeypatch.setitem(sys.modules, "keras", fake)
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    with pytest.raises(bench.sections._Unavailable, match=r"keras runs on the 'jax' backend \(KERAS_BACKEND='jax'\); this "
                                                 r"comparison needs KERAS_BACKEND=torch"):
        bench.sections._keras_xception(71)


def test_keras_that_fails_to_import_is_reported_with_the_cause(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", None)  # `import keras` now raises ImportError
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    with pytest.raises(bench.sections._Unavailable, match=r"keras failed to import on backend 'tensorflow' \(.*\); this "
                                                 r"comparison needs KERAS_BACKEND=torch"):
        bench.sections._keras_xception(71)


@pytest.mark.parametrize("path, match", [("{tmp}", "Expected a file, not a directory"),
                                         ("{tmp}/no/such/dir/b.json", "Expected a file in an existing")])
def test_bench_json_path_is_checked_before_the_run(path, match, tmp_path, capsys, monkeypatch):
    def no_run(*args, **kwargs):
        raise AssertionError("the benchmarks ran before the --json path was checked")

    monkeypatch.setattr(bench, "run", no_run)
    assert main(["bench", "--json", path.format(tmp=tmp_path)]) == 1
    assert f"torchblocks bench: error: --json: Invalid value for argument `path`. {match}" in capsys.readouterr().err


def test_the_command_offers_every_section():
    # cli/bench.py names the sections without importing torch (for --help): the two lists agree.
    from torchblocks.cli.bench import SECTION_NAMES

    assert SECTION_NAMES == tuple(bench.SECTIONS)

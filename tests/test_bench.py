"""The benchmark harness runs and reports; speed itself is measured by `torchblocks bench`, not here."""
import json
import math

import pytest
import torch

from torchblocks.bench import Case, peak_tensor_mib, time_pair
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

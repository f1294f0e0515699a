"""scripts/experiments/*: each runs from one command; --quick checks the whole pipeline in seconds.

The scripts run in this process (as ``python SCRIPT --quick --out DIR`` would, without paying
for torch's import again) and must leave their plots and a JSON of consistent results.
"""
import json
import math
import os
import runpy
import sys

import pytest

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "experiments")
SEEDS = 3
CONFIGS = ["plain", "plain + BN", "residual", "residual + BN"]
# SeparableConvNet's six 3x3 convs (C_in, C_out), then Dense 128 -> 32 -> 10.
BOOK_CONVS = [(3, 32), (32, 64), (64, 64), (64, 128), (128, 64), (64, 128)]
DENSE_PARAMS = 128 * 32 + 32 + 32 * 10 + 10


def _run(name: str, out, capsys, monkeypatch) -> dict:
    monkeypatch.syspath_prepend(EXPERIMENTS)
    monkeypatch.setattr(sys, "argv", [name, "--quick", "--out", str(out)])
    runpy.run_path(os.path.join(EXPERIMENTS, f"{name}.py"), run_name="__main__")
    table = capsys.readouterr().out
    with open(out / f"{name}.json", encoding="utf-8") as f:
        results = json.load(f)
    assert results["quick"] and results["seeds"] == list(range(SEEDS))
    results["table"] = table
    return results


def _png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_gradient_flow_quick(tmp_path, capsys, monkeypatch):
    results = _run("gradient_flow", tmp_path, capsys, monkeypatch)
    for depth in results["depths"]:
        assert _png(tmp_path / f"gradient_flow_depth{depth}.png")
        for label in CONFIGS:
            runs = results["results"][str(depth)][label]
            assert len(runs) == SEEDS
            for run in runs:
                # One norm per weight layer: stem conv, the body's convs, the Dense classifier.
                assert len(run["at_init"]) == len(run["trained"]) == depth + 2
                assert all(0 < v < math.inf for v in run["at_init"] + run["trained"])
                assert 0 <= run["val_accuracy"] <= 1
            assert f"| {depth} | {label} |" in results["table"]


@pytest.mark.slow
def test_batchnorm_curves_quick(tmp_path, capsys, monkeypatch):
    results = _run("batchnorm_curves", tmp_path, capsys, monkeypatch)
    assert _png(tmp_path / "batchnorm_curves.png")
    for label in CONFIGS:
        for run in results["results"][label]:
            assert len(run["losses"]) == results["steps"]
            assert [step for step, _ in run["evaluations"]] == list(
                range(results["eval_every"], results["steps"] + 1, results["eval_every"]))
        assert f"| {label} |" in results["table"]


@pytest.mark.slow
def test_separable_vs_standard_quick(tmp_path, capsys, monkeypatch):
    results = _run("separable_vs_standard", tmp_path, capsys, monkeypatch)
    assert _png(tmp_path / "separable_vs_standard.png")
    counts = results["counts"]
    biases = sum(c_out for _, c_out in BOOK_CONVS)
    separable = sum(9 * c_in + c_in * c_out for c_in, c_out in BOOK_CONVS) + biases + DENSE_PARAMS
    standard = sum(9 * c_in * c_out for c_in, c_out in BOOK_CONVS) + biases + DENSE_PARAMS
    assert (counts["SeparableConvNet"]["params"], counts["standard counterpart"]["params"]) == (separable, standard)
    assert counts["SeparableConvNet"]["params"] == 38_949  # the book's figure, as Keras counts it
    assert counts["standard counterpart"]["macs"] > 5 * counts["SeparableConvNet"]["macs"]
    for model, by_fraction in results["results"].items():
        sizes = [runs[0]["train_images"] for runs in by_fraction.values()]
        assert sizes == sorted(sizes) and sizes[-1] == 1438 and all(len(runs) == SEEDS for runs in by_fraction.values())
        assert all(results["latency_ms"][model][key] > 0 for key in ("batch 1", "batch 32", "batch 1 @64"))
    assert "| SeparableConvNet | 38,949 |" in results["table"]

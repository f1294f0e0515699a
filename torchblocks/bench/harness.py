"""The benchmark harness: a case, a report, and the interleaved timing of two callables."""
import importlib.metadata
import json
import os
import platform
import statistics
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn


@dataclass
class Case:
    """One comparison: ``candidate`` time over ``reference`` time, and the target it must meet.

    ``higher_is_better`` marks speed-ups (reference / candidate), where the target is a minimum.
    """

    name: str
    candidate: str
    reference: str
    candidate_ms: float
    reference_ms: float
    ratio: float
    target: Optional[float] = None
    higher_is_better: bool = False
    note: str = ""

    @property
    def met(self) -> Optional[bool]:
        if self.target is None:
            return None
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target


@dataclass
class Report:
    """All cases of one run, with the machine and versions they were measured on."""

    device: str
    threads: int
    quick: bool
    environment: Dict[str, str]
    cases: List[Case] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)

    def to_json(self) -> str:
        data = asdict(self)
        for case, row in zip(self.cases, data["cases"]):
            row["met"] = case.met
        return json.dumps(data, indent=2)

    def table(self) -> str:
        lines = [
            f"device={self.device} threads={self.threads} quick={self.quick} "
            + " ".join(f"{k}={v}" for k, v in self.environment.items()),
            f"{'case':<44}{'candidate ms':>14}{'reference ms':>14}{'ratio':>8}{'target':>9}  met",
        ]
        for c in self.cases:
            target = "" if c.target is None else ("≥" if c.higher_is_better else "≤") + f"{c.target:g}"
            met = {None: "", True: "yes", False: "NO"}[c.met]
            lines.append(
                f"{c.name:<44}{c.candidate_ms:>14.3f}{c.reference_ms:>14.3f}{c.ratio:>8.3f}{target:>9}  {met}"
            )
            lines.append(f"    {c.candidate} vs {c.reference}")
            if c.note:
                lines.append(f"    {c.note}")
        lines += [f"skipped: {s}" for s in self.skipped]
        return "\n".join(lines)


def environment(device: str) -> Dict[str, str]:
    env = {"torch": torch.__version__, "python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
    for name in ("timm", "keras"):
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = "absent"
    for var in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        if var in os.environ:
            env[var] = os.environ[var]
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_pair(
    candidate: Callable[[], object],
    reference: Callable[[], object],
    rounds: int,
    min_run_time: float,
    device: str = "cpu",
) -> Tuple[float, float, float]:
    """Median ms of each, and the median per-round ratio, timing the two alternately."""
    from torch.utils.benchmark import Timer

    def measure(fn: Callable[[], object]) -> float:
        def stmt() -> None:
            fn()
            _sync(device)

        # Timer runs stmt on 1 thread unless told otherwise: keep the threads the run reports.
        timer = Timer("stmt()", globals={"stmt": stmt}, num_threads=torch.get_num_threads())
        return timer.blocked_autorange(min_run_time=min_run_time).median

    for fn in (candidate, reference):
        fn()
        _sync(device)
    cand, ref = [], []
    for r in range(rounds):
        # Alternate who goes first so that drift within a round favours neither. The two sides
        # are told apart by position, not identity: one callable may be timed against itself.
        if r % 2 == 0:
            cand.append(measure(candidate))
            ref.append(measure(reference))
        else:
            ref.append(measure(reference))
            cand.append(measure(candidate))
    ratio = statistics.median(c / r for c, r in zip(cand, ref))
    return statistics.median(cand) * 1e3, statistics.median(ref) * 1e3, ratio


def no_grad_call(module: nn.Module, x: Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return module(x)

    return run


def timm_xception(device: str) -> nn.Module:
    import timm

    return timm.create_model("legacy_xception", pretrained=False).to(device).eval()

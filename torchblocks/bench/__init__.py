"""Side-by-side benchmarks: torchblocks against plain PyTorch, timm and Keras, reported as ratios.

Absolute times on shared CPUs drift from run to run, so every case times a candidate and its
reference in the same process, interleaved round by round (``torch.utils.benchmark.Timer``,
``blocked_autorange`` medians after warm-up), and reports the median of the per-round ratios
``candidate / reference``. Each section runs in a fresh process, so that no section inherits the
heap another one shaped; an A/A control row shows each run's noise. timm and keras are optional
(extra ``[bench]``): their rows are skipped when they are not installed.
"""
from .harness import Case, Report, time_pair
from .runner import SECTIONS, run

__all__ = ["Case", "Report", "SECTIONS", "run", "time_pair"]

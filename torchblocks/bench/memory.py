"""The ``memory`` section of ``torchblocks bench``: peak memory of the optimised Xception against
timm's channels-last model, as tensors alive at the peak of a call (``torch.profiler``) and as
process RSS growth (fresh processes, Linux only)."""
import statistics
import subprocess
import sys
from typing import Callable, Dict, List, Tuple

import torch

import torchblocks as tb
from .harness import Case, Report, no_grad_call, timm_xception


_PEAK_SCRIPT = r"""
import gc, sys, torch
torch.set_num_threads({threads})
kind, size = sys.argv[1], int(sys.argv[2])
x = torch.randn(1, 3, size, size)
if kind == "timm":
    import timm
    run = timm.create_model("legacy_xception", pretrained=False).eval().to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
else:
    import torchblocks as tb
    run = tb.optimize_for_inference(tb.models.xception().eval(), x)
with torch.no_grad():
    run(x)
gc.collect()
import ctypes
ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap, so both start from the loaded model
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
baseline = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current RSS: the peak below is this inference's alone
with torch.no_grad():
    for _ in range(3):
        run(x)
print(baseline, status("VmHWM"))
"""


def peak_memory_mb(kind: str, size: int, threads: int) -> Tuple[float, float]:
    """(RSS with the model loaded, peak RSS during three inferences) in MiB, in a fresh process.

    Linux/glibc only. After one warm-up inference the freed heap is returned to the system
    (``malloc_trim``) and the high-water mark reset through ``/proc/self/clear_refs``, so neither
    the import of torch (whose libraries dominate a fresh process' RSS) nor the preparation of the
    model masks the steady-state inference peak.
    """
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT.format(threads=threads), kind, str(size)],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout.split()
    return int(out[-2]) / 1024, int(out[-1]) / 1024


def peak_tensor_mib(fn: Callable[[], object]) -> float:
    """MiB of tensors alive at the peak of one call of ``fn`` (after a warm-up call), above those
    alive before it: the allocations and frees ``torch.profiler`` records between top-level ops."""
    from torch.profiler import profile

    fn()
    with profile(profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted((e for e in prof.events() if e.cpu_parent is None), key=lambda e: e.time_range.start):
        live += event.cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


def bench_memory(report: Report, quick: bool) -> None:
    if report.device != "cpu":
        report.skipped.append("peak memory: measured on CPU only")
        return
    try:
        timm_model = timm_xception(report.device).to(memory_format=torch.channels_last)
    except ImportError:
        report.skipped.append("peak memory vs timm: timm not installed (pip install 'torchblocks[bench]')")
        return
    size = 71 if quick else 299
    x = torch.randn(1, 3, size, size)
    ours = no_grad_call(tb.optimize_for_inference(tb.models.xception().eval(), x), x)
    theirs = no_grad_call(timm_model, x.contiguous(memory_format=torch.channels_last))
    a, b = peak_tensor_mib(ours), peak_tensor_mib(theirs)
    report.cases.append(
        Case(f"Xception inference peak tensor memory N=1 {size}² (MiB)", "tb.optimize_for_inference",
             "timm channels_last", a, b, a / b, 1.00,
             note="columns: MiB of tensors alive at the peak of one call (torch.profiler), not ms")
    )
    if not sys.platform.startswith("linux"):
        report.skipped.append("peak RSS: measured on Linux only (/proc)")
        return
    # Process RSS adds the allocator's and oneDNN's own memory, and moves by ~20% from process to
    # process with the heap's layout: median of fresh processes, alternating; reported, not judged.
    runs: Dict[str, List[Tuple[float, float]]] = {"tb-fast": [], "timm": []}
    for _ in range(1 if quick else 5):
        for kind in runs:
            runs[kind].append(peak_memory_mb(kind, size, report.threads))
    extra_ours, extra_theirs = (statistics.median(peak - base for base, peak in runs[k]) for k in runs)
    peak_ours, peak_theirs = (statistics.median(peak for _, peak in runs[k]) for k in runs)
    report.cases.append(
        Case(f"Xception inference peak RSS growth N=1 {size}² (MiB)", "tb.optimize_for_inference",
             "timm channels_last", extra_ours, extra_theirs, extra_ours / extra_theirs,
             note=f"columns: MiB of RSS above the loaded model during inference, not ms; peak RSS "
                  f"{peak_ours:.0f} vs {peak_theirs:.0f} MiB (medians of {len(runs['timm'])} processes each)")
    )

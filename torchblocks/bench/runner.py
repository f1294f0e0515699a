"""Running the benchmark: each section in a fresh process, its cases gathered into one report."""
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .harness import Case, Report, environment
from .inductor import bench_compile
from .memory import bench_memory
from .sections import bench_layers, bench_separable_saving, bench_training, bench_xception


def _rounds(quick: bool) -> Tuple[int, float]:
    # Many short rounds, alternating: this machine's speed drifts by up to 2x within minutes, and
    # a ratio is only as good as the interleaving of its two timings.
    return (2, 0.01) if quick else (15, 0.2)


def _bench_memory(report: Report, quick: bool, rounds: int, min_run_time: float) -> None:
    bench_memory(report, quick)


SECTIONS: Dict[str, Callable[[Report, bool, int, float], None]] = {
    "layers": bench_layers,
    "separable": bench_separable_saving,
    "xception": bench_xception,
    "compile": bench_compile,
    "training": bench_training,
    "memory": _bench_memory,
}


def _section_main() -> None:
    """Entry point of one section's process: runs it and prints its cases as JSON."""
    name, device, quick, threads = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
    torch.set_num_threads(threads)
    report = Report(device, threads, quick, {})
    SECTIONS[name](report, quick, *_rounds(quick))
    print(json.dumps({"cases": [asdict(c) for c in report.cases], "skipped": report.skipped}))


def _run_section(name: str, report: Report) -> None:
    """Run section ``name`` in a fresh Python process and add its cases to ``report``.

    Each section gets a process of its own: glibc's heap keeps the shape earlier allocations gave
    it, and a layer timed after other sections could page-fault its blocks in afresh on every call
    (measured: the separable row fell from 66% to 32% of its theoretical speed-up when it ran after
    the layer rows in one process).
    """
    code = "from torchblocks.bench.runner import _section_main; _section_main()"
    args = [name, report.device, "1" if report.quick else "0", str(report.threads)]
    with tempfile.TemporaryDirectory(prefix="torchblocks-bench-") as cache:
        # Inductor starts cold in every section: no compiled graph or kernel is reused between runs.
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TORCHINDUCTOR_FX_GRAPH_CACHE": "0",
               "TORCHINDUCTOR_AUTOGRAD_CACHE": "0"}
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=3600, env=env)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["(no output)"]
        # The error's own line first: the command prints only the first line of a failure.
        raise RuntimeError(f"benchmark section {name!r} failed: {lines[-1]}\n" + "\n".join(lines[-40:]))
    data = json.loads(done.stdout.strip().splitlines()[-1])
    report.cases += [Case(**{k: v for k, v in case.items() if k != "met"}) for case in data["cases"]]
    report.skipped += data["skipped"]


def run(
    device: str = "cpu", quick: bool = False, threads: Optional[int] = None, progress: bool = False,
    sections: Optional[List[str]] = None,
) -> Report:
    """Run every benchmark (or the ``sections`` named, keys of ``SECTIONS``); ``quick`` shrinks
    sizes and repetitions. With ``progress``, a bar on stderr counts the sections (only where
    stderr is a terminal)."""
    names = list(SECTIONS) if sections is None else list(sections)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise ValueError(
            f"Invalid value for argument `sections`. Expected names from {tuple(SECTIONS)}. Received sections={sections!r}."
        )
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("Invalid value for argument `device`. CUDA is not available. Received device='cuda'.")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"Invalid value for argument `device`. Expected 'cpu' or 'cuda'. Received device={device!r}.")
    if threads is not None:
        torch.set_num_threads(threads)
    report = Report(device, torch.get_num_threads(), quick, environment(device))
    from tqdm import tqdm

    bar = tqdm(names, desc="bench", unit="section", file=sys.stderr, disable=None if progress else True)
    for name in bar:
        bar.set_postfix_str(name)
        _run_section(name, report)
    return report

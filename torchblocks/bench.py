"""Side-by-side benchmarks: torchblocks against plain PyTorch, timm and Keras, reported as ratios.

Absolute times on shared CPUs drift from run to run, so every case times a candidate and its
reference in the same process, interleaved round by round (``torch.utils.benchmark.Timer``,
``blocked_autorange`` medians after warm-up), and reports the median of the per-round ratios
``candidate / reference``. Each section runs in a fresh process, so that no section inherits the
heap another one shaped; an A/A control row shows each run's noise. timm and keras are optional
(extra ``[bench]``): their rows are skipped when they are not installed.
"""
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

import torchblocks as tb
from torchblocks._checks import first_line


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


def _environment(device: str) -> Dict[str, str]:
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


class _HandResidual(nn.Module):
    """What a user writes by hand: ``body(x) + x``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + x


def _no_grad(module: nn.Module, x: Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return module(x)

    return run


def _layer_pairs(c: int, size: int, batch: int, device: str) -> List[Tuple[str, str, str, nn.Module, nn.Module, float]]:
    """(case, candidate, reference, tb module, hand-written module with the same weights, target)."""
    sep = tb.SeparableConv2d(c, c, 3, padding="same")
    hand_sep = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.Conv2d(c, c, 1))
    hand_sep.load_state_dict({"0.weight": sep.depthwise.weight, "1.weight": sep.pointwise.weight, "1.bias": sep.pointwise.bias})
    conv = tb.Conv2d(c, c, 3, padding="same")
    hand_conv = nn.Conv2d(c, c, 3, padding=1)
    hand_conv.load_state_dict(conv.state_dict())
    bn = tb.BatchNorm(c)
    hand_bn = nn.BatchNorm2d(c)
    hand_bn.load_state_dict(bn.bn.state_dict())
    body = nn.Conv2d(c, c, 3, padding=1)
    res = tb.Residual(body)
    hand_res = _HandResidual(body)
    pairs = [
        ("SeparableConv2d same s1 (eager)", "tb.SeparableConv2d", "nn.Sequential(dw, pw)", sep, hand_sep, 1.03),
        ("Conv2d same s1 (eager)", "tb.Conv2d", "nn.Conv2d(padding=1)", conv, hand_conv, 1.03),
        ("BatchNorm eval (eager)", "tb.BatchNorm", "nn.BatchNorm2d", bn, hand_bn, 1.03),
        ("Residual identity (eager)", "tb.Residual", "body(x) + x", res, hand_res, 1.03),
    ]
    return [(n, a, b, m1.to(device).eval(), m2.to(device).eval(), t) for n, a, b, m1, m2, t in pairs]


def bench_layers(report: Report, quick: bool, rounds: int, min_run_time: float) -> None:
    device = report.device
    c, size, batch = (32, 16, 2) if quick else (128, 56, 8)
    x = torch.randn(batch, c, size, size, device=device)
    for name, cand, ref, m1, m2, target in _layer_pairs(c, size, batch, device):
        a, b, ratio = time_pair(_no_grad(m1, x), _no_grad(m2, x), rounds, min_run_time, device)
        report.cases.append(Case(f"{name} C={c} {size}² N={batch}", cand, ref, a, b, ratio, target))
    # A/A control: one module against itself. Its distance from 1 is this run's noise floor.
    control = _layer_pairs(c, size, batch, device)[0][4]
    a, b, ratio = time_pair(_no_grad(control, x), _no_grad(control, x), rounds, min_run_time, device)
    report.cases.append(
        Case(f"A/A control C={c} {size}² N={batch}", "nn.Sequential(dw, pw)", "the same module", a, b, ratio,
             note="the same work on both sides: abs(ratio - 1) is the noise of this run")
    )
    try:
        from timm.layers import create_conv2d
    except ImportError:
        report.skipped.append("Conv2d same s2 vs timm: timm not installed (pip install 'torchblocks[bench]')")
        return
    for size2 in (size, size + 1):
        ours = tb.Conv2d(c, c, 3, 2, "same").to(device).eval()
        theirs = create_conv2d(c, c, 3, stride=2, padding="same", bias=True).to(device).eval()
        theirs.load_state_dict(ours.state_dict())
        x2 = torch.randn(batch, c, size2, size2, device=device)
        a, b, ratio = time_pair(_no_grad(ours, x2), _no_grad(theirs, x2), rounds, min_run_time, device)
        parity = "symmetric pad" if size2 % 2 else "asymmetric pad"
        report.cases.append(
            Case(f"Conv2d same s2 C={c} {size2}² ({parity})", "tb.Conv2d", "timm create_conv2d same", a, b, ratio, 1.00)
        )


def _timm_xception(device: str) -> nn.Module:
    import timm

    return timm.create_model("legacy_xception", pretrained=False).to(device).eval()


def bench_xception(report: Report, quick: bool, rounds: int, min_run_time: float) -> None:
    device = report.device
    size = 71 if quick else 299
    x = torch.randn(1, 3, size, size, device=device)
    model = tb.models.xception().to(device).eval()
    fast = tb.optimize_for_inference(model, x)
    with torch.no_grad():
        err = (fast(x) - model(x)).abs().max().item()
    eager = _no_grad(model, x)
    a, b, ratio = time_pair(_no_grad(fast, x), eager, rounds, min_run_time, device)
    report.cases.append(
        Case(f"Xception inference N=1 {size}² vs own eager", "tb.optimize_for_inference", "tb eager", a, b, ratio,
             note=f"max abs(fast - eager) = {err:.2e}")
    )
    try:
        timm_model = _timm_xception(device).to(memory_format=torch.channels_last)
    except ImportError:
        report.skipped.append("Xception vs timm: timm not installed (pip install 'torchblocks[bench]')")
    else:
        x_cl = x.contiguous(memory_format=torch.channels_last)
        a, b, ratio = time_pair(_no_grad(fast, x), _no_grad(timm_model, x_cl), rounds, min_run_time, device)
        report.cases.append(
            Case(f"Xception inference N=1 {size}² vs timm", "tb.optimize_for_inference",
                 "timm legacy_xception channels_last", a, b, ratio, 0.85)
        )
    if device == "cpu":
        try:
            keras_run = _keras_xception(size)
        except _Unavailable as exc:
            report.skipped.append(f"Xception vs Keras: {exc}")
        else:
            a, b, ratio = time_pair(_no_grad(fast, x), keras_run, max(1, rounds // 2), min_run_time, device)
            report.cases.append(
                Case(f"Xception inference N=1 {size}² vs Keras", "tb.optimize_for_inference",
                     "keras Xception (torch backend)", a, b, ratio, 0.25)
            )


class _Unavailable(Exception):
    """An optional reference cannot run here; the message says why."""


def _keras_xception(size: int) -> Callable[[], object]:
    try:
        importlib.metadata.version("keras")
    except importlib.metadata.PackageNotFoundError:
        raise _Unavailable("keras not installed (pip install 'torchblocks[bench]')") from None
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError as exc:  # e.g. KERAS_BACKEND names a backend that is not installed
        raise _Unavailable(
            f"keras failed to import on backend {os.environ['KERAS_BACKEND']!r} ({first_line(exc)}); "
            f"this comparison needs KERAS_BACKEND=torch"
        ) from exc
    if keras.backend.backend() != "torch":
        raise _Unavailable(
            f"keras runs on the {keras.backend.backend()!r} backend (KERAS_BACKEND="
            f"{os.environ.get('KERAS_BACKEND')!r}); this comparison needs KERAS_BACKEND=torch"
        )
    model = keras.applications.Xception(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    x = torch.randn(1, size, size, 3)

    def run() -> object:
        with torch.no_grad():
            return model(x, training=False)

    return run


def bench_training(report: Report, quick: bool, rounds: int, min_run_time: float) -> None:
    device = report.device
    try:
        timm_model = _timm_xception(device)
    except ImportError:
        report.skipped.append("Xception training vs timm: timm not installed (pip install 'torchblocks[bench]')")
        return
    batch, size = (2, 71) if quick else (8, 160)
    x = torch.randn(batch, 3, size, size, device=device)
    target = torch.randint(0, 1000, (batch,), device=device)
    ours = tb.models.xception().to(device).train()
    timm_model.train()

    def step_fn(model: nn.Module) -> Callable[[], object]:
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step() -> object:
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), target)
            loss.backward()
            opt.step()
            return loss

        return step

    a, b, ratio = time_pair(step_fn(ours), step_fn(timm_model), rounds, min_run_time, device)
    report.cases.append(
        Case(f"Xception train step N={batch} {size}²", "tb xception", "timm legacy_xception", a, b, ratio, 1.05)
    )


def bench_separable_saving(report: Report, quick: bool, rounds: int, min_run_time: float) -> None:
    """Speed-up of SeparableConv2d over a standard Conv2d, against the MAC ratio."""
    device = report.device
    c, size, batch, k = (64, 14, 2, 3) if quick else (256, 56, 8, 3)
    x = torch.randn(batch, c, size, size, device=device)
    sep = tb.optimize_for_inference(tb.SeparableConv2d(c, c, k, padding="same").to(device).eval(), x)
    std = tb.optimize_for_inference(tb.Conv2d(c, c, k, padding="same").to(device).eval(), x)
    theoretical = 1 / (1 / c + 1 / k**2)
    # The target row feeds the (N, C, H, W) input a user has; inside an optimised network a layer
    # receives the channels-last tensors of the layer before, which the second row shows.
    for inp, layout, target in ((x, "", 0.60), (x.contiguous(memory_format=torch.channels_last), " channels-last input", None)):
        a, b, ratio = time_pair(_no_grad(sep, inp), _no_grad(std, inp), rounds, min_run_time, device)
        speedup = 1 / ratio
        report.cases.append(
            Case(f"Separable vs standard C={c} k={k} {size}² N={batch}{layout}", "SeparableConv2d", "Conv2d", a, b,
                 speedup / theoretical, target, higher_is_better=True,
                 note=f"measured speed-up {speedup:.2f}x of theoretical {theoretical:.2f}x (ratio column: fraction reached)")
        )


def _rounds(quick: bool) -> Tuple[int, float]:
    # Many short rounds, alternating: this machine's speed drifts by up to 2x within minutes, and
    # a ratio is only as good as the interleaving of its two timings.
    return (2, 0.01) if quick else (15, 0.2)


def _bench_compile(report: Report, quick: bool, rounds: int, min_run_time: float) -> None:
    from .bench_compile import bench_compile

    bench_compile(report, quick, rounds, min_run_time)


def _bench_memory(report: Report, quick: bool, rounds: int, min_run_time: float) -> None:
    from .bench_memory import bench_memory

    bench_memory(report, quick)


SECTIONS: Dict[str, Callable[[Report, bool, int, float], None]] = {
    "layers": bench_layers,
    "separable": bench_separable_saving,
    "xception": bench_xception,
    "compile": _bench_compile,
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
    code = "from torchblocks.bench import _section_main; _section_main()"
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
    report = Report(device, torch.get_num_threads(), quick, _environment(device))
    from tqdm import tqdm

    bar = tqdm(names, desc="bench", unit="section", file=sys.stderr, disable=None if progress else True)
    for name in bar:
        bar.set_postfix_str(name)
        _run_section(name, report)
    return report

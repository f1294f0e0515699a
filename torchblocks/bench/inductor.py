"""The ``compile`` section of ``torchblocks bench``: ``tb.optimize_for_inference`` against
``torch.compile`` (inductor, ``freezing=True``, channels-last) on the CNNs a user would compile.

For each model and batch, both paths are built from the same eval-mode model, whose BatchNorm
statistics come from one real batch (random weights, as ``weights=None`` gives, would leave
torchvision's BatchNorms at mean 0 / variance 1 and the logits near zero, where an exactness
check means nothing). Each build is timed from the model to the first output (inductor compiles
on its first call), with inductor's caches off (the section's process gets
``TORCHINDUCTOR_FX_GRAPH_CACHE=0``, ``TORCHINDUCTOR_AUTOGRAD_CACHE=0`` and an empty
``TORCHINDUCTOR_CACHE_DIR``), so that every build is a cold one; steady-state calls are then
timed side by side as in every other section.
"""
import copy
import time
from typing import Callable, List, Tuple

import torch
from torch import Tensor, nn

import torchblocks as tb
from .harness import Case, Report, time_pair

# (name, input size, builder): the four CNNs; torchvision's with weights=None.
MODELS: List[Tuple[str, int, Callable[[], nn.Module]]] = [
    ("Xception", 299, lambda: tb.models.xception()),
    ("ResNet-50", 224, lambda: _torchvision("resnet50")),
    ("MobileNetV2", 224, lambda: _torchvision("mobilenet_v2")),
    ("EfficientNet-B0", 224, lambda: _torchvision("efficientnet_b0")),
]
QUICK_MODELS: List[Tuple[str, int, Callable[[], nn.Module]]] = [
    ("SeparableConvNet", 32, lambda: tb.models.SeparableConvNet()),
]
BATCHES = (1, 8)


def _torchvision(name: str) -> nn.Module:
    import torchvision

    return getattr(torchvision.models, name)(weights=None)


def statistics_from_a_batch(model: nn.Module, x: Tensor) -> nn.Module:
    """``model`` in eval mode with every BatchNorm's running statistics those of the batch ``x``."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the one batch seen
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def _timed(build: Callable[[], Callable[[], object]]) -> Tuple[Callable[[], object], float]:
    """The callable ``build`` returns, after its first call, and the seconds both took."""
    start = time.perf_counter()
    run = build()
    with torch.no_grad():
        run()
    return run, time.perf_counter() - start


def _inductor(model: nn.Module, x: Tensor) -> Callable[[], object]:
    compiled = torch.compile(
        copy.deepcopy(model).to(memory_format=torch.channels_last), fullgraph=True, dynamic=False,
        options={"freezing": True},
    )
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def run() -> object:
        with torch.no_grad():
            return compiled(x_cl)

    return run


def _ours(model: nn.Module, x: Tensor) -> Callable[[], object]:
    fast = tb.optimize_for_inference(model, x)
    return lambda: fast(x)


def bench_compile(report: Report, quick: bool, rounds: int, min_run_time: float) -> None:
    if report.device != "cpu":
        report.skipped.append("optimize_for_inference vs torch.compile: measured on CPU only")
        return
    control = True
    for name, size, make in QUICK_MODELS if quick else MODELS:
        torch.manual_seed(0)
        model = statistics_from_a_batch(make(), torch.randn(4, 3, size, size))
        for batch in (1,) if quick else BATCHES:
            torch.compiler.reset()
            x = torch.randn(batch, 3, size, size)
            with torch.no_grad():
                expected = model(x)
            ours, ours_s = _timed(lambda: _ours(model, x))
            theirs, theirs_s = _timed(lambda: _inductor(model, x))
            with torch.no_grad():
                errors = [float((run() - expected).abs().max()) for run in (ours, theirs)]
            case = f"{name} {size}² N={batch}"
            if control:
                # A/A: the optimised model against itself; abs(ratio - 1) is this section's noise.
                a, b, ratio = time_pair(ours, ours, rounds, min_run_time, report.device)
                report.cases.append(Case(
                    f"A/A control {case}", "tb.optimize_for_inference", "the same module", a, b, ratio,
                    note="the same work on both sides: abs(ratio - 1) is the noise of this section",
                ))
                control = False
            a, b, ratio = time_pair(ours, theirs, rounds, min_run_time, report.device)
            report.cases.append(Case(
                f"{case} vs inductor", "tb.optimize_for_inference", "torch.compile(freezing) channels_last",
                a, b, ratio, 1.00,
                note=f"max abs error against eager: ours {errors[0]:.2e}, inductor {errors[1]:.2e}",
            ))
            report.cases.append(Case(
                f"{case} build vs inductor", "tb.optimize_for_inference", "torch.compile(freezing) channels_last",
                ours_s * 1e3, theirs_s * 1e3, ours_s / theirs_s, 0.20,
                note="columns: ms from the model to the first output (inductor cold, caches off), not per call",
            ))

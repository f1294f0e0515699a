"""The sections measured against plain PyTorch, timm and Keras: layers, the separable saving,
Xception inference and training."""
import importlib.metadata
import os
from typing import Callable, List, Tuple

import torch
from torch import Tensor, nn

import torchblocks as tb
from .._checks import first_line

from .harness import Case, Report, no_grad_call, time_pair, timm_xception


class _HandResidual(nn.Module):
    """What a user writes by hand: ``body(x) + x``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + x


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
        a, b, ratio = time_pair(no_grad_call(m1, x), no_grad_call(m2, x), rounds, min_run_time, device)
        report.cases.append(Case(f"{name} C={c} {size}² N={batch}", cand, ref, a, b, ratio, target))
    # A/A control: one module against itself. Its distance from 1 is this run's noise floor.
    control = _layer_pairs(c, size, batch, device)[0][4]
    a, b, ratio = time_pair(no_grad_call(control, x), no_grad_call(control, x), rounds, min_run_time, device)
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
        a, b, ratio = time_pair(no_grad_call(ours, x2), no_grad_call(theirs, x2), rounds, min_run_time, device)
        parity = "symmetric pad" if size2 % 2 else "asymmetric pad"
        report.cases.append(
            Case(f"Conv2d same s2 C={c} {size2}² ({parity})", "tb.Conv2d", "timm create_conv2d same", a, b, ratio, 1.00)
        )


def bench_xception(report: Report, quick: bool, rounds: int, min_run_time: float) -> None:
    device = report.device
    size = 71 if quick else 299
    x = torch.randn(1, 3, size, size, device=device)
    model = tb.models.xception().to(device).eval()
    fast = tb.optimize_for_inference(model, x)
    with torch.no_grad():
        err = (fast(x) - model(x)).abs().max().item()
    eager = no_grad_call(model, x)
    a, b, ratio = time_pair(no_grad_call(fast, x), eager, rounds, min_run_time, device)
    report.cases.append(
        Case(f"Xception inference N=1 {size}² vs own eager", "tb.optimize_for_inference", "tb eager", a, b, ratio,
             note=f"max abs(fast - eager) = {err:.2e}")
    )
    try:
        timm_model = timm_xception(device).to(memory_format=torch.channels_last)
    except ImportError:
        report.skipped.append("Xception vs timm: timm not installed (pip install 'torchblocks[bench]')")
    else:
        x_cl = x.contiguous(memory_format=torch.channels_last)
        a, b, ratio = time_pair(no_grad_call(fast, x), no_grad_call(timm_model, x_cl), rounds, min_run_time, device)
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
            a, b, ratio = time_pair(no_grad_call(fast, x), keras_run, max(1, rounds // 2), min_run_time, device)
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
        timm_model = timm_xception(device)
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
        a, b, ratio = time_pair(no_grad_call(sep, inp), no_grad_call(std, inp), rounds, min_run_time, device)
        speedup = 1 / ratio
        report.cases.append(
            Case(f"Separable vs standard C={c} k={k} {size}² N={batch}{layout}", "SeparableConv2d", "Conv2d", a, b,
                 speedup / theoretical, target, higher_is_better=True,
                 note=f"measured speed-up {speedup:.2f}x of theoretical {theoretical:.2f}x (ratio column: fraction reached)")
        )

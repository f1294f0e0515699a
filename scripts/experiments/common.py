"""Shared pieces of the experiments: conv stacks, digits in memory, a step loop, statistics, plots.

Every experiment trains on scikit-learn's digits (the fixed stratified split of ``torchblocks
train --dataset digits``) with the book's optimizer, RMSprop with Keras' update rule and defaults,
on one CPU thread (small models train faster on one thread than on two contended ones, and the
results do not depend on the thread count).
"""
import argparse
import functools
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import torchblocks as tb
from torchblocks.train import digits, initialize

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs")
SEEDS = (0, 1, 2)
BATCH = 32


def parser(description: str) -> argparse.ArgumentParser:
    """The options every experiment shares; each adds its own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a few steps of every case (< 30 s): checks the pipeline only")
    p.add_argument("--out", default=DOCS, help="folder for the PNG plots and the JSON results (default: docs/)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="training seeds (default 0 1 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--jobs", type=int, default=None,
                   help="training runs in parallel processes (default 2; 1 with --quick)")
    return p


def start(args: argparse.Namespace) -> float:
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    if args.jobs is None:
        args.jobs = 1 if args.quick else 2
    return time.perf_counter()


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def run_all(function: Callable[..., Any], cases: Sequence[tuple], args: argparse.Namespace) -> List[Any]:
    """``[function(*case) for case in cases]``, in ``args.jobs`` spawned processes when above 1."""
    if args.jobs <= 1:
        return [function(*case) for case in cases]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_worker_init, initargs=(args.threads,)) as pool:
        return list(pool.map(function, *zip(*cases)))


class ConvBlock(nn.Module):
    """Two 3x3 'same' convs (each optionally followed by BatchNorm), a ReLU between them; with
    ``residual`` the input is added back before the closing ReLU (the ResNet basic block)."""

    def __init__(self, channels: int, batchnorm: bool, residual: bool) -> None:
        super().__init__()

        def norm() -> nn.Module:
            return tb.BatchNorm(channels) if batchnorm else nn.Identity()

        body = nn.Sequential(tb.Conv2d(channels, channels, 3, padding="same"), norm(), nn.ReLU(),
                             tb.Conv2d(channels, channels, 3, padding="same"), norm())
        self.body = tb.Residual(body) if residual else body
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x))


def conv_stack(depth: int, residual: bool, batchnorm: bool, channels: int = 16, in_channels: int = 1,
               num_classes: int = 10) -> nn.Sequential:
    """A stem conv, ``depth`` 3x3 convs in blocks of two, global average pooling and a Dense layer.

    ``depth`` counts the convs of the body; the stem and the classifier make depth + 2 weight layers.
    """
    if depth % 2:
        raise ValueError(f"depth must be even (blocks of two convs); received {depth}")
    stem_norm = tb.BatchNorm(channels) if batchnorm else nn.Identity()
    layers = [tb.Conv2d(in_channels, channels, 3, padding="same"), stem_norm, nn.ReLU()]
    layers += [ConvBlock(channels, batchnorm, residual) for _ in range(depth // 2)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), tb.Dense(channels, num_classes)]
    return nn.Sequential(*layers)


def weight_layers(model: nn.Module) -> List[nn.Module]:
    """Convs and dense layers in forward order: the layers whose gradient norms are plotted."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@functools.lru_cache(maxsize=2)
def digits_in_memory(size: int = 8, channels: int = 1) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train, y_train, x_val, y_val): the digits split as ``torchblocks train`` makes it (cached)."""
    splits = digits((size, size), channels)

    def stack(dataset) -> Tuple[Tensor, Tensor]:
        images, labels = zip(*(dataset[i] for i in range(len(dataset))))
        return torch.stack(images), torch.tensor(labels)

    return (*stack(splits.train), *stack(splits.val))


def model_for(seed: int, factory: Callable[[], nn.Module], init: str) -> nn.Module:
    torch.manual_seed(seed)
    return initialize(factory(), init)


def train_steps(model: nn.Module, x: Tensor, y: Tensor, steps: int, seed: int,
                on_step: Optional[Callable[[int, float], None]] = None) -> nn.Module:
    """``steps`` RMSprop steps (Keras defaults) on batches of ``BATCH`` drawn by reshuffling each epoch."""
    optimizer = tb.optim.RMSprop(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    order: List[int] = []
    model.train()
    for step in range(1, steps + 1):
        if len(order) < BATCH:
            order += torch.randperm(len(y), generator=generator).tolist()
        batch, order = order[:BATCH], order[BATCH:]
        loss = F.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step, loss.item())
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def pm(values: Sequence[float], digits: int = 3, scale: float = 1.0) -> str:
    mean, std = mean_std([v * scale for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def log10_pm(values: Sequence[float]) -> str:
    """Mean ± std of log10(values), the scale on which gradient norms spread."""
    return pm([math.log10(v) if v > 0 else -math.inf for v in values], 2)


def pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError('the experiments plot with matplotlib: pip install "torchblocks[plot]"') from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def finish(args: argparse.Namespace, name: str, results: Dict, table: str, started: float) -> None:
    """Write ``name``.json beside the plots and print the table with the run's own figures."""
    results = dict(results, seconds=round(time.perf_counter() - started, 1), threads=args.threads,
                   jobs=args.jobs, quick=args.quick, torch=torch.__version__)
    with open(os.path.join(args.out, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    print(table)
    print(f"\n{name}: {results['seconds']} s in {args.jobs} process(es) of {args.threads} thread(s); "
          f"plots and {name}.json in {args.out}", file=sys.stderr)

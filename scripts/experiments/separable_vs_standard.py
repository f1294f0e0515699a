#!/usr/bin/env python
"""Separable vs standard: the book's SeparableConvNet against its standard-convolution counterpart.

The text's claims: depthwise-separable convolutions need fewer parameters and less computation,
give smaller and faster models, and often learn better representations from less data. Both
models (``tb.models.SeparableConvNet`` and ``tb.analysis.standard_counterpart`` of it: every
SeparableConv2D a full Conv2D of the same shape) train on 10%, 30% and 100% of the digits'
training split (class-balanced subsets), upsampled to 32x32 RGB (the model's smallest input; the
digits have 8x8 pixels), for the same number of RMSprop steps (Keras defaults, batch 32, He
initialisation), three seeds each. Parameters and MACs come from ``tb.analysis.count``; latency is
the median time per call, both models measured alternately in the same process.

    python scripts/experiments/separable_vs_standard.py        # docs/separable_vs_standard.png
    python scripts/experiments/separable_vs_standard.py --quick
"""
import statistics
import time

import torch

import common
import torchblocks as tb
from torchblocks.train import stratified_subset

FRACTIONS = (0.1, 0.3, 1.0)
STEPS, QUICK_STEPS = 200, 2
SIZE, BOOK_SIZE = 32, 64
LATENCY_ROUNDS, QUICK_LATENCY_ROUNDS = 7, 1
LATENCY_SECONDS, QUICK_LATENCY_SECONDS = 1.0, 0.1  # per model and shape in each round
MODELS = ("SeparableConvNet", "standard counterpart")


def build(name: str) -> torch.nn.Module:
    separable = tb.models.SeparableConvNet(3, 10)
    return separable if name == MODELS[0] else tb.analysis.standard_counterpart(separable)


def latencies(rounds: int, seconds: float):
    """Median ms per call of both models at batch 1 and 32 (32x32) and batch 1 at the book's 64x64,
    alternating the two models round by round so that load on the machine hits both alike."""
    torch.manual_seed(0)
    models = {name: build(name).eval() for name in MODELS}
    shapes = {"batch 1": (1, 3, SIZE, SIZE), "batch 32": (32, 3, SIZE, SIZE),
              "batch 1 @64": (1, 3, BOOK_SIZE, BOOK_SIZE)}
    times = {(name, key): [] for name in MODELS for key in shapes}
    for _ in range(rounds):
        for key, shape in shapes.items():
            x = torch.randn(shape)
            for name, model in models.items():
                times[name, key].append(tb.analysis.measure_latency(model, x, warmup=2, repeats=7, max_seconds=seconds))
    return {name: {key: statistics.median(times[name, key]) for key in shapes} for name in MODELS}


def counts():
    torch.manual_seed(0)
    result = {}
    for name in MODELS:
        model = build(name)
        small = tb.analysis.count(model, torch.randn(1, 3, SIZE, SIZE))
        book = tb.analysis.count(model, torch.randn(1, 3, BOOK_SIZE, BOOK_SIZE))
        result[name] = dict(params=small.params, macs=small.macs, macs_book=book.macs)
    return result


def train_case(name, fraction, seed, steps, init):
    x_train, y_train, x_val, y_val = common.digits_in_memory(SIZE, 3)
    kept = stratified_subset(y_train.tolist(), fraction)
    model = common.model_for(seed, lambda: build(name), init)
    started = time.perf_counter()
    common.train_steps(model, x_train[kept], y_train[kept], steps, seed)
    seconds = time.perf_counter() - started
    return dict(train_images=len(kept), val_accuracy=common.accuracy(model, x_val, y_val),
                ms_per_step=1000 * seconds / steps)


def plot(results, count, latency, path):
    plt = common.pyplot()
    fig, (acc_ax, ratio_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name in MODELS:
        stats = [common.mean_std([r["val_accuracy"] * 100 for r in results[name][str(f)]]) for f in FRACTIONS]
        acc_ax.errorbar([100 * f for f in FRACTIONS], [m for m, _ in stats], yerr=[s for _, s in stats],
                        marker="o", capsize=4, label=name)
    acc_ax.set_xscale("log")
    acc_ax.set_xticks([100 * f for f in FRACTIONS], [f"{100 * f:.0f}%" for f in FRACTIONS])
    acc_ax.set_xlabel("share of the training split")
    acc_ax.set_ylabel("validation accuracy % (mean ± std)")
    acc_ax.grid(True, alpha=0.3)
    acc_ax.legend()
    separable, standard = MODELS
    train_ms = {name: statistics.fmean(r["ms_per_step"] for rows in results[name].values() for r in rows)
                for name in MODELS}
    ratios = {
        "params": count[standard]["params"] / count[separable]["params"],
        "MACs": count[standard]["macs"] / count[separable]["macs"],
        "latency\nbatch 1": latency[standard]["batch 1"] / latency[separable]["batch 1"],
        "latency\nbatch 32": latency[standard]["batch 32"] / latency[separable]["batch 32"],
        "train\nstep": train_ms[standard] / train_ms[separable],
    }
    bars = ratio_ax.bar(list(ratios), list(ratios.values()))
    ratio_ax.bar_label(bars, fmt="%.2f")
    ratio_ax.axhline(1.0, color="black", linewidth=0.8)
    ratio_ax.set_ylabel("standard / separable (32x32 input)")
    fig.suptitle("SeparableConvNet vs its standard-convolution counterpart on the digits")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return train_ms


def main() -> None:
    p = common.parser(__doc__.splitlines()[1])
    p.add_argument("--steps", type=int, default=None, help=f"training steps (default {STEPS}; --quick {QUICK_STEPS})")
    p.add_argument("--init", default="he", choices=("he", "keras", "model"), help="initialisation (default he)")
    args = p.parse_args()
    started = common.start(args)
    steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    specs = [(name, f, seed, steps, args.init) for name in MODELS for f in FRACTIONS for seed in args.seeds]
    outcomes = iter(common.run_all(train_case, specs, args))
    results = {name: {str(f): [next(outcomes) for _ in args.seeds] for f in FRACTIONS} for name in MODELS}
    count = counts()
    latency = latencies(*((QUICK_LATENCY_ROUNDS, QUICK_LATENCY_SECONDS) if args.quick
                          else (LATENCY_ROUNDS, LATENCY_SECONDS)))
    train_ms = plot(results, count, latency, f"{args.out}/separable_vs_standard.png")
    rows = []
    for name in MODELS:
        rows.append([name, f"{count[name]['params']:,}", f"{count[name]['macs'] / 1e6:.2f}M",
                     f"{count[name]['macs_book'] / 1e6:.1f}M", f"{latency[name]['batch 1']:.2f}",
                     f"{latency[name]['batch 32']:.1f}", f"{latency[name]['batch 1 @64']:.2f}", f"{train_ms[name]:.0f}"]
                    + [common.pm([r["val_accuracy"] for r in results[name][str(f)]], 1, 100) for f in FRACTIONS])
    images = [results[MODELS[0]][str(f)][0]["train_images"] for f in FRACTIONS]
    table = common.markdown_table(
        ["model", "params", "MACs @32", "MACs @64", "ms batch 1", "ms batch 32", "ms batch 1 @64", "ms/train step"]
        + [f"val acc % @{100 * f:.0f}% ({n} images)" for f, n in zip(FRACTIONS, images)], rows)
    common.finish(args, "separable_vs_standard", dict(steps=steps, init=args.init, seeds=args.seeds, counts=count,
                                                      latency_ms=latency, results=results), table, started)


if __name__ == "__main__":
    main()

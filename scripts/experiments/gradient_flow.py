#!/usr/bin/env python
"""Gradient flow with depth: per-layer gradient norms of plain vs residual conv stacks.

The text's claim: residual connections help any model deeper than about 10 layers, because
without them the gradient reaching the first layers vanishes. For body depths 10, 20, 40 and 80
(3x3 convs, 16 channels, in blocks of two; plus a stem conv and a Dense classifier), with and
without BatchNorm, it measures the gradient norm of every weight layer on a fixed batch of 256
training digits (8x8, one channel) at initialisation (Keras' Glorot-uniform, zero biases) and
after training with RMSprop, and the validation accuracy reached.

    python scripts/experiments/gradient_flow.py            # docs/gradient_flow_depth{10,20,40,80}.png
    python scripts/experiments/gradient_flow.py --quick    # a few steps, depths 4 and 10
"""
import copy
import json
import math

import torch
import torch.nn.functional as F

import common

DEPTHS = (10, 20, 40, 80)
QUICK_DEPTHS = (4, 10)
STEPS, QUICK_STEPS = 200, 3
PROBE = 256
# (label, residual, batchnorm)
CONFIGS = (("plain", False, False), ("plain + BN", False, True), ("residual", True, False),
           ("residual + BN", True, True))


def grad_norms(model, x, y):
    """‖∂loss/∂W‖ of every weight layer, in forward order, on one batch in training mode (on a copy,
    so the BatchNorm statistics of ``model`` stay as they are)."""
    probe = copy.deepcopy(model).train()
    layers = common.weight_layers(probe)
    grads = torch.autograd.grad(F.cross_entropy(probe(x), y), [layer.weight for layer in layers])
    return [float(g.norm()) for g in grads]


def probe_batch():
    """A fixed batch of PROBE training digits on which every gradient norm is measured."""
    x_train, y_train, _, _ = common.digits_in_memory(8, 1)
    chosen = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(1234))[:PROBE]
    return x_train[chosen], y_train[chosen]


def run_case(depth, residual, batchnorm, seed, steps, init):
    x_train, y_train, x_val, y_val = common.digits_in_memory(8, 1)
    probe = probe_batch()
    model = common.model_for(seed, lambda: common.conv_stack(depth, residual, batchnorm), init)
    at_init = grad_norms(model, *probe)
    losses = []
    common.train_steps(model, x_train, y_train, steps, seed, lambda step, loss: losses.append(loss))
    tail = losses[-min(20, len(losses)):]
    return dict(at_init=at_init, trained=grad_norms(model, *probe), val_accuracy=common.accuracy(model, x_val, y_val),
                final_loss=sum(tail) / len(tail))


def first_to_last(runs, key):
    """log10(‖g_first‖ / ‖g_last‖) over the seeds without a zero gradient; "k dead" counts the rest
    (every ReLU of some layer dead: exactly zero gradient from there down)."""
    live = [run[key][0] / run[key][-1] for run in runs if min(run[key]) > 0]
    dead = len(runs) - len(live)
    text = common.log10_pm(live) if live else "—"
    return text + (f" ({dead} dead)" if dead else "")


def plot(depth, cases, steps, path):
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    panels = ((axes[0], "at_init", "at initialisation"), (axes[1], "trained", f"after {steps} RMSprop steps"))
    for ax, key, title in panels:
        for index, (label, _, _) in enumerate(CONFIGS):
            color = f"C{index}"
            # Where every ReLU of a layer died, the gradients below it are exactly zero: off a log scale.
            live = [[math.log10(v) for v in run[key]] for run in cases[label] if min(run[key]) > 0]
            dead = len(cases[label]) - len(live)
            name = label + (f" ({dead} of {len(cases[label])} seeds dead: zero gradients, not drawn)" if dead else "")
            if not live:
                ax.plot([], [], color=color, label=name)
                continue
            layers = range(1, len(live[0]) + 1)
            ax.plot(layers, [10 ** (sum(c) / len(c)) for c in zip(*live)], color=color, label=name)
            ax.fill_between(layers, [10 ** min(c) for c in zip(*live)], [10 ** max(c) for c in zip(*live)],
                            color=color, alpha=0.2)
        ax.set_yscale("log")
        ax.set_xlabel("weight layer (1 = stem conv, last = Dense classifier)")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("‖∂loss/∂W‖")
    fig.suptitle(f"Body depth {depth}: gradient norm per weight layer, geometric mean over seeds (band: min..max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results, depths, steps):
    rows = []
    for depth in depths:
        for label, _, _ in CONFIGS:
            runs = results[str(depth)][label]
            rows.append([depth, label, first_to_last(runs, "at_init"), first_to_last(runs, "trained"),
                         common.pm([run["final_loss"] for run in runs], 3),
                         common.pm([run["val_accuracy"] for run in runs], 1, 100)])
    return common.markdown_table(
        ["depth", "stack", "log10 ‖g_first‖/‖g_last‖ at init", f"same after {steps} steps",
         "train loss (last 20 steps)", "val accuracy %"], rows)


def main() -> None:
    p = common.parser(__doc__.splitlines()[1])
    p.add_argument("--steps", type=int, default=None, help=f"training steps (default {STEPS}; --quick {QUICK_STEPS})")
    p.add_argument("--init", default="keras", choices=("keras", "he", "model"), help="initialisation (default keras)")
    p.add_argument("--replot", metavar="JSON", help="redraw the plots and the table from a saved gradient_flow.json")
    args = p.parse_args()
    started = common.start(args)
    if args.replot:
        with open(args.replot, encoding="utf-8") as f:
            saved = json.load(f)
        for depth in saved["depths"]:
            plot(depth, saved["results"][str(depth)], saved["steps"], f"{args.out}/gradient_flow_depth{depth}.png")
        print(table(saved["results"], saved["depths"], saved["steps"]))
        return
    steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    depths = QUICK_DEPTHS if args.quick else DEPTHS
    cases = [(depth, residual, bn, seed, steps, args.init)
             for depth in depths for _, residual, bn in CONFIGS for seed in args.seeds]
    outcomes = iter(common.run_all(run_case, cases, args))
    results = {str(depth): {label: [next(outcomes) for _ in args.seeds] for label, _, _ in CONFIGS} for depth in depths}
    for depth in depths:
        plot(depth, results[str(depth)], steps, f"{args.out}/gradient_flow_depth{depth}.png")
    common.finish(args, "gradient_flow", dict(steps=steps, init=args.init, seeds=args.seeds, depths=depths,
                                              results=results), table(results, depths, steps), started)


if __name__ == "__main__":
    main()

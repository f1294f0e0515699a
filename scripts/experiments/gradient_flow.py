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


def run_case(depth, residual, batchnorm, seed, steps, init, data, probe):
    x_train, y_train, x_val, y_val = data
    model = common.model_for(seed, lambda: common.conv_stack(depth, residual, batchnorm), init)
    at_init = grad_norms(model, *probe)
    losses = []
    common.train_steps(model, x_train, y_train, steps, seed, lambda step, loss: losses.append(loss))
    tail = losses[-min(20, len(losses)):]
    return dict(at_init=at_init, trained=grad_norms(model, *probe), val_accuracy=common.accuracy(model, x_val, y_val),
                final_loss=sum(tail) / len(tail))


def plot(depth, cases, steps, path):
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, title in ((axes[0], "at_init", "at initialisation"), (axes[1], "trained", f"after {steps} RMSprop steps")):
        for label, _, _ in CONFIGS:
            runs = [[math.log10(max(v, 1e-30)) for v in run[key]] for run in cases[label]]
            layers = range(1, len(runs[0]) + 1)
            mean = [sum(column) / len(column) for column in zip(*runs)]
            ax.plot(layers, [10 ** m for m in mean], label=label)
            ax.fill_between(layers, [10 ** min(c) for c in zip(*runs)], [10 ** max(c) for c in zip(*runs)], alpha=0.2)
        ax.set_yscale("log")
        ax.set_xlabel("weight layer (1 = stem conv, last = Dense classifier)")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("‖∂loss/∂W‖")
    axes[0].legend()
    fig.suptitle(f"Gradient norm per weight layer, body depth {depth} (+ stem conv + Dense): "
                 f"geometric mean over {len(cases[CONFIGS[0][0]])} seeds, band = min..max")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = common.parser(__doc__.splitlines()[1])
    p.add_argument("--steps", type=int, default=None, help=f"training steps (default {STEPS}; --quick {QUICK_STEPS})")
    p.add_argument("--init", default="keras", choices=("keras", "he", "model"), help="initialisation (default keras)")
    args = p.parse_args()
    started = common.start(args)
    steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    depths = QUICK_DEPTHS if args.quick else DEPTHS
    data = common.digits_in_memory(8, 1)
    generator = torch.Generator().manual_seed(1234)
    chosen = torch.randperm(len(data[1]), generator=generator)[:PROBE]
    probe = (data[0][chosen], data[1][chosen])
    results, rows = {}, []
    for depth in depths:
        cases = {label: [run_case(depth, residual, bn, seed, steps, args.init, data, probe) for seed in args.seeds]
                 for label, residual, bn in CONFIGS}
        results[str(depth)] = cases
        plot(depth, cases, steps, f"{args.out}/gradient_flow_depth{depth}.png")
        for label, _, _ in CONFIGS:
            runs = cases[label]
            rows.append([depth, label,
                         common.log10_pm([run["at_init"][0] / run["at_init"][-1] for run in runs]),
                         common.log10_pm([run["trained"][0] / run["trained"][-1] for run in runs]),
                         common.pm([run["final_loss"] for run in runs], 3),
                         common.pm([run["val_accuracy"] for run in runs], 1, 100)])
    table = common.markdown_table(
        ["depth", "stack", "log10 ‖g_first‖/‖g_last‖ at init", f"same after {steps} steps",
         "train loss (last 20 steps)", "val accuracy %"], rows)
    common.finish(args, "gradient_flow", dict(steps=steps, init=args.init, seeds=args.seeds, depths=depths,
                                              results=results), table, started)


if __name__ == "__main__":
    main()

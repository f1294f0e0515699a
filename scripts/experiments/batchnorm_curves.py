#!/usr/bin/env python
"""BatchNorm: training curves of a deep plain and a deep residual conv stack, with and without BN.

The text's claim: batch normalization helps gradients propagate and lets deeper networks train.
A body of 40 3x3 convs (16 channels, blocks of two; stem conv and Dense classifier around it),
Keras' Glorot-uniform initialisation, RMSprop with Keras' defaults, batch 32, on the 8x8 digits:
training loss at every step and validation accuracy every EVAL_EVERY steps, over three seeds.

    python scripts/experiments/batchnorm_curves.py            # docs/batchnorm_curves.png
    python scripts/experiments/batchnorm_curves.py --quick
"""
import common

DEPTH, QUICK_DEPTH = 40, 10
STEPS, QUICK_STEPS = 400, 6
EVAL_EVERY, QUICK_EVAL_EVERY = 20, 3
SMOOTH = 20  # training-loss points are means over this many steps
TARGET = 0.8  # "steps to reach" this validation accuracy
CONFIGS = (("plain", False, False), ("plain + BN", False, True), ("residual", True, False),
           ("residual + BN", True, True))


def run_case(depth, residual, batchnorm, seed, steps, every, init):
    x_train, y_train, x_val, y_val = common.digits_in_memory(8, 1)
    model = common.model_for(seed, lambda: common.conv_stack(depth, residual, batchnorm), init)
    losses, evaluations = [], []

    def on_step(step, loss):
        losses.append(loss)
        if step % every == 0:
            evaluations.append((step, common.accuracy(model, x_val, y_val)))
            model.train()

    common.train_steps(model, x_train, y_train, steps, seed, on_step)
    return dict(losses=losses, evaluations=evaluations)


def smoothed(losses, window):
    return [(min(i + window, len(losses)), sum(losses[i:i + window]) / len(losses[i:i + window]))
            for i in range(0, len(losses), window)]


def plot(cases, depth, path):
    plt = common.pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for label, _, _ in CONFIGS:
        runs = cases[label]
        curves = [smoothed(run["losses"], SMOOTH) for run in runs]
        steps = [step for step, _ in curves[0]]
        stats = [common.mean_std(column) for column in zip(*[[v for _, v in c] for c in curves])]
        line, = loss_ax.plot(steps, [m for m, _ in stats], label=label)
        loss_ax.fill_between(steps, [m - s for m, s in stats], [m + s for m, s in stats], alpha=0.2,
                             color=line.get_color())
        steps = [step for step, _ in runs[0]["evaluations"]]
        stats = [common.mean_std(column) for column in zip(*[[v for _, v in run["evaluations"]] for run in runs])]
        acc_ax.plot(steps, [100 * m for m, _ in stats], label=label, color=line.get_color())
        acc_ax.fill_between(steps, [100 * (m - s) for m, s in stats], [100 * (m + s) for m, s in stats], alpha=0.2,
                            color=line.get_color())
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel(f"training loss (mean of {SMOOTH} steps)")
    acc_ax.set_xlabel("step")
    acc_ax.set_ylabel("validation accuracy %")
    for ax in (loss_ax, acc_ax):
        ax.grid(True, alpha=0.3)
    acc_ax.legend()
    fig.suptitle(f"Body depth {depth} on the digits: mean ± std over {len(cases[CONFIGS[0][0]])} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def steps_to(evaluations, target):
    return next((step for step, acc in evaluations if acc >= target), None)


def main() -> None:
    p = common.parser(__doc__.splitlines()[1])
    p.add_argument("--depth", type=int, default=None, help=f"body depth (default {DEPTH}; --quick {QUICK_DEPTH})")
    p.add_argument("--steps", type=int, default=None, help=f"training steps (default {STEPS}; --quick {QUICK_STEPS})")
    p.add_argument("--init", default="keras", choices=("keras", "he", "model"), help="initialisation (default keras)")
    args = p.parse_args()
    started = common.start(args)
    depth = args.depth or (QUICK_DEPTH if args.quick else DEPTH)
    steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    every = QUICK_EVAL_EVERY if args.quick else EVAL_EVERY
    specs = [(depth, residual, bn, seed, steps, every, args.init) for _, residual, bn in CONFIGS for seed in args.seeds]
    outcomes = iter(common.run_all(run_case, specs, args))
    cases = {label: [next(outcomes) for _ in args.seeds] for label, _, _ in CONFIGS}
    plot(cases, depth, f"{args.out}/batchnorm_curves.png")
    rows = []
    for label, _, _ in CONFIGS:
        runs = cases[label]
        reached = [steps_to(run["evaluations"], TARGET) for run in runs]
        hit = [s for s in reached if s is not None]
        rows.append([label,
                     common.pm([sum(run["losses"][-SMOOTH:]) / len(run["losses"][-SMOOTH:]) for run in runs], 3),
                     common.pm([run["evaluations"][-1][1] for run in runs], 1, 100),
                     common.pm([max(acc for _, acc in run["evaluations"]) for run in runs], 1, 100),
                     f"{len(hit)}/{len(runs)} seeds" + (f", {common.pm(hit, 0)}" if hit else "")])
    table = common.markdown_table(
        ["stack", f"train loss (last {SMOOTH} steps)", f"val accuracy % at step {steps}", "best val accuracy %",
         f"reached {TARGET:.0%} val accuracy (steps)"], rows)
    common.finish(args, "batchnorm_curves", dict(depth=depth, steps=steps, eval_every=every, init=args.init,
                                                 seeds=args.seeds, results=cases), table, started)


if __name__ == "__main__":
    main()

"""``torchblocks compare``: parameters, MACs (and time) of separable vs standard convolutions."""
import argparse
import json
import sys
from typing import Dict, List, Sequence, Tuple

from ._common import (
    MACS_NOTE, UsageError, add_format, add_input_size, add_progress, is_model_spec, load_model_spec,
    model_name, positive_int, progress,
)

UNITS = "MACs = fused multiply-adds as fvcore counts them (FLOPs = 2 x MACs); params = trainable parameters."
SLOWER = (
    "time sep/std > 1: the separable version is SLOWER. Fewer MACs can take longer because\n"
    "depthwise convs are memory-bound: they do few multiply-adds per byte they move."
)


def add_parser(sub: "argparse._SubParsersAction") -> None:
    from ..analysis.comparisons import (
        DEFAULT_CHANNELS, DEFAULT_KERNEL_SIZES, DEFAULT_LAYER_SIZE, DEFAULT_MODELS,
    )

    p = sub.add_parser(
        "compare",
        help="parameters, MACs (and time) of separable vs standard convolutions",
        description=(
            "Separable vs standard convolution: single layers over a grid of channels C, kernel "
            f"sizes k and strides (input 1xCx{DEFAULT_LAYER_SIZE[0]}x{DEFAULT_LAYER_SIZE[1]}), then "
            f"the models {', '.join(DEFAULT_MODELS)} against their standard-convolution versions. "
            + MACS_NOTE
        ),
    )
    add_format(p)
    add_input_size(
        p, "model input size (default per model: 3 64 64 for SeparableConvNet, 3 299 299 for "
        "xception, 3 224 224 otherwise; required with MODULE:ATTRIBUTE); the layer grid uses its H and W"
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--model", metavar="MODEL",
        help="compare only this model: a name from torchblocks.models, or MODULE:ATTRIBUTE naming "
             "your own nn.Module or a function returning one (e.g. mypkg.nets:build)",
    )
    which.add_argument("--only", choices=("layers", "models"), help="run only one of the two sections")
    p.add_argument("--channels", nargs="+", type=positive_int, default=list(DEFAULT_CHANNELS),
                   metavar="C", help="layer grid channels, C_in = C_out (default %(default)s)")
    p.add_argument("--kernel-sizes", nargs="+", type=positive_int, default=list(DEFAULT_KERNEL_SIZES),
                   metavar="K", help="layer grid kernel sizes (default %(default)s)")
    p.add_argument("--latency", action="store_true", help="also measure median CPU time per call")
    p.add_argument("--repeats", type=positive_int, default=10, help="timed calls per latency (default 10)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="save MACs and measured time against channels for the first kernel size at "
                        "stride 1, timing those rows (needs matplotlib: torchblocks[plot])")
    p.add_argument("--wide", action="store_true",
                   help="text: every column (input, standard version, parameters next to times); "
                        "the default fits 100 columns, markdown always has every column")
    add_progress(p)
    p.set_defaults(func=run)


def _layer_jobs(args: argparse.Namespace) -> List[Tuple[int, int, int]]:
    from ..analysis.comparisons import DEFAULT_STRIDES, layer_grid

    if args.model is not None or args.only == "models":
        return []
    return layer_grid(args.channels, args.kernel_sizes, DEFAULT_STRIDES)


def _model_jobs(args: argparse.Namespace) -> List[object]:
    from ..analysis.comparisons import DEFAULT_MODELS

    if args.model is not None:
        if is_model_spec(args.model):
            if args.input_size is None:
                raise UsageError(f"--model {args.model}: give its input size with --input-size C H W")
            return [(args.model, load_model_spec(args.model))]
        return [model_name(args.model)]
    return [] if args.only == "layers" else list(DEFAULT_MODELS)


def run(args: argparse.Namespace) -> int:
    from ..analysis.comparisons import DEFAULT_LAYER_SIZE, compare_layer, compare_model

    if args.plot is not None:
        if args.model is not None or args.only == "models":
            raise UsageError("--plot draws the single-layer grid: drop --model / --only models")
        from ..analysis.comparisons import check_plot_path

        check_plot_path(args.plot)  # before the run, not after it
    layer_jobs, model_jobs = _layer_jobs(args), _model_jobs(args)
    size = tuple(args.input_size[1:]) if args.input_size else DEFAULT_LAYER_SIZE
    plotted_kernel = args.kernel_sizes[0]  # the plot shows the first kernel size at stride 1
    jobs = [("layer", job) for job in layer_jobs] + [("model", job) for job in model_jobs]
    layers, models, plotted = [], [], []
    for kind, job in progress(jobs, args):
        if kind == "layer":
            c, k, s = job
            on_plot = args.plot is not None and (k, s) == (plotted_kernel, 1)
            result = compare_layer(c, k, s, size, latency=args.latency or on_plot, repeats=args.repeats)
            layers.append(result)
            if on_plot:
                plotted.append((c, result))
        elif isinstance(job, tuple):
            spec, module = job
            models.append(compare_model(module, args.input_size, latency=args.latency,
                                        repeats=args.repeats, name=spec))
        else:
            models.append(compare_model(job, args.input_size, latency=args.latency, repeats=args.repeats))
    plot_note = ""
    if args.plot is not None and not args.latency:
        plot_note = (f"-: not timed; --plot times only the k={plotted_kernel} stride-1 rows "
                     "(--latency times every row)")
    print(_render_comparisons(layers, models, size, args, plot_note))
    if args.plot is not None:
        from ..analysis.comparisons import plot_channel_sweep

        title = f"SeparableConv2d vs Conv2d, k={plotted_kernel}, stride 1, input 1xCx{size[0]}x{size[1]}"
        plot_channel_sweep(args.plot, [r for _, r in plotted], [c for c, _ in plotted], title)
        print(f"saved {args.plot}", file=sys.stderr)
    return 0


def _render_comparisons(
    layers: Sequence, models: Sequence, size: Sequence[int], args: argparse.Namespace, plot_note: str
) -> str:
    from ..analysis.comparisons import SHORT, comparison_table
    from ..analysis.tables import records_to_csv

    if args.format == "json":
        document: Dict[str, object] = {
            "convention": {
                "macs": "fused multiply-adds, as fvcore counts them",
                "flops": "2 * macs",
                "params": "trainable parameters",
                "ratio": "separable / standard (time_ratio > 1: the separable version is slower)",
            },
            "layers": [c.to_dict() for c in layers],
            "models": [c.to_dict() for c in models],
        }
        return json.dumps(document, indent=2)
    if args.format == "csv":
        records = [dict(section="layer", **c.to_dict()) for c in layers]
        records += [dict(section="model", **c.to_dict()) for c in models]
        for record in records:
            record["input_shape"] = "x".join(str(d) for d in record["input_shape"])
            if record["replaced"] is not None:
                record["replaced"] = "; ".join(record["replaced"])
        return records_to_csv(records).rstrip("\n")
    wide = args.wide or args.format == "markdown"  # a document has no terminal width to fit
    tables = []
    if layers:
        tables.append(comparison_table(
            f"Single layers: SeparableConv2d(C, C, k, stride, 'same') vs Conv2d, input 1xCx{size[0]}x{size[1]}",
            layers, layers=True, wide=wide))
    if models:
        tables.append(comparison_table("Models: separable vs standard convolutions", models,
                                       layers=False, wide=wide))
    notes = [UNITS, SHORT]
    if layers:
        notes.append("theory = 1/C_out + 1/k^2, the textbook MAC ratio of one separable layer.")
    if models and not wide:
        notes.append('std version: conv="standard" for a resnet, else its standard_counterpart '
                     "(--wide: input, version).")
    timed = [c for c in [*layers, *models] if c.latency_ms is not None]
    if timed:
        import torch

        from ..analysis.counting import DEFAULT_WARMUP

        notes.append(f"ms = median wall time per call, batch 1, over up to {args.repeats} calls after "
                     f"{DEFAULT_WARMUP} warm-up calls; CPU threads: {torch.get_num_threads()}.")
        notes.append(SLOWER)
        if not wide and args.latency:
            notes.append("Parameter columns: --wide, or --format csv/json.")
    if plot_note:
        notes.append(plot_note)
    render = (lambda t: t.to_markdown()) if args.format == "markdown" else (lambda t: t.to_text())
    return "\n\n".join(["\n".join(notes)] + [render(t) for t in tables])

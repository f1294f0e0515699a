"""The ``torchblocks`` command: ``compare`` (the main job), ``summary``, ``export``, ``bench``.

Each subcommand is one ``_add_<name>`` function that registers its parser and points ``func``
at the function running it; ``build_parser`` wires them all. Bad input ends with a one-line
error on stderr and a non-zero exit status, never a traceback.
"""
import argparse
import importlib.util
import json
import sys
from typing import Dict, List, Optional, Sequence, Tuple

EXIT_USAGE = 2
EXIT_FAILURE = 1
FORMATS = ("text", "markdown", "csv", "json")
UNITS_NOTE = (
    "MACs = fused multiply-adds as fvcore counts them (FLOPs = 2 x MACs); params = trainable "
    "parameters"
)
MACS_NOTE = UNITS_NOTE + "; ratio = separable / standard."


class UsageError(Exception):
    """A malformed command line; ``main`` prints it as one line."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: error: {message}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}")
    return value


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="text", help="output format (default text)")


def _add_input_size(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "--input-size", nargs=3, type=_positive_int, metavar=("C", "H", "W"), default=None, help=help_text
    )


def _model_name(name: str) -> str:
    """The canonical spelling of a ``torchblocks.models`` name, or ``UsageError``."""
    from .models import MODEL_NAMES

    for known in MODEL_NAMES:
        if known.lower() == name.lower():
            return known
    raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")


# -- compare ---------------------------------------------------------------------------------


def _add_compare(sub: "argparse._SubParsersAction") -> None:
    from .analysis.comparisons import (
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
    _add_format(p)
    _add_input_size(
        p, "model input size (default per model: 3 64 64, 3 299 299 for xception, 3 224 224); "
        "the layer grid uses its H and W"
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="NAME", help="compare only this model from torchblocks.models")
    which.add_argument("--only", choices=("layers", "models"), help="run only one of the two sections")
    p.add_argument("--channels", nargs="+", type=_positive_int, default=list(DEFAULT_CHANNELS),
                   metavar="C", help="layer grid channels, C_in = C_out (default %(default)s)")
    p.add_argument("--kernel-sizes", nargs="+", type=_positive_int, default=list(DEFAULT_KERNEL_SIZES),
                   metavar="K", help="layer grid kernel sizes (default %(default)s)")
    p.add_argument("--latency", action="store_true", help="also measure median CPU time per call")
    p.add_argument("--repeats", type=_positive_int, default=10, help="timed calls per latency (default 10)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="save MACs and measured time against channels (needs matplotlib: torchblocks[plot])")
    p.set_defaults(func=_compare)


def _layer_jobs(args: argparse.Namespace) -> List[Tuple[int, int, int]]:
    from .analysis.comparisons import DEFAULT_STRIDES, layer_grid

    if args.model is not None or args.only == "models":
        return []
    return layer_grid(args.channels, args.kernel_sizes, DEFAULT_STRIDES)


def _model_jobs(args: argparse.Namespace) -> List[str]:
    from .analysis.comparisons import DEFAULT_MODELS

    if args.model is not None:
        return [_model_name(args.model)]
    return [] if args.only == "layers" else list(DEFAULT_MODELS)


def _compare(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .analysis.comparisons import DEFAULT_LAYER_SIZE, compare_layer, compare_model

    if args.plot is not None:
        if args.model is not None or args.only == "models":
            raise UsageError("--plot draws the single-layer grid: drop --model / --only models")
        if importlib.util.find_spec("matplotlib") is None:
            raise UsageError('--plot needs matplotlib: pip install "torchblocks[plot]"')
    layer_jobs, model_jobs = _layer_jobs(args), _model_jobs(args)
    size = tuple(args.input_size[1:]) if args.input_size else DEFAULT_LAYER_SIZE
    plotted_kernel = args.kernel_sizes[0]  # the plot shows the first kernel size at stride 1
    jobs = [("layer", job) for job in layer_jobs] + [("model", job) for job in model_jobs]
    layers, models, plotted = [], [], []
    # The bar shows only on a terminal (disable=None) and only once the run has taken 2 s.
    for kind, job in tqdm(jobs, desc="counting", unit="net", delay=2.0, leave=False,
                          file=sys.stderr, disable=None):
        if kind == "layer":
            c, k, s = job
            on_plot = args.plot is not None and (k, s) == (plotted_kernel, 1)
            result = compare_layer(c, k, s, size, latency=args.latency or on_plot, repeats=args.repeats)
            layers.append(result)
            if on_plot:
                plotted.append((c, result))
        else:
            models.append(compare_model(job, args.input_size, latency=args.latency, repeats=args.repeats))
    print(_render_comparisons(layers, models, size, args.format, args.repeats))
    if args.plot is not None:
        from .analysis.comparisons import plot_channel_sweep

        title = f"SeparableConv2d vs Conv2d, k={plotted_kernel}, stride 1, input 1xCx{size[0]}x{size[1]}"
        plot_channel_sweep(args.plot, [r for _, r in plotted], [c for c, _ in plotted], title)
        print(f"saved {args.plot}", file=sys.stderr)
    return 0


def _render_comparisons(
    layers: Sequence, models: Sequence, size: Sequence[int], fmt: str, repeats: int
) -> str:
    from .analysis.comparisons import comparison_table
    from .analysis.tables import records_to_csv

    if fmt == "json":
        document: Dict[str, object] = {
            "convention": {
                "macs": "fused multiply-adds, as fvcore counts them",
                "flops": "2 * macs",
                "params": "trainable parameters",
                "ratio": "separable / standard",
            },
            "layers": [c.to_dict() for c in layers],
            "models": [c.to_dict() for c in models],
        }
        return json.dumps(document, indent=2)
    if fmt == "csv":
        records = [dict(section="layer", **c.to_dict()) for c in layers]
        records += [dict(section="model", **c.to_dict()) for c in models]
        for record in records:
            record["input_shape"] = "x".join(str(d) for d in record["input_shape"])
        return records_to_csv(records).rstrip("\n")
    tables = []
    if layers:
        tables.append(comparison_table(
            f"Single layers: SeparableConv2d(C, C, k, stride, 'same') vs Conv2d, input 1xCx{size[0]}x{size[1]}",
            layers, layers=True))
    if models:
        tables.append(comparison_table("Models: separable vs standard convolutions", models, layers=False))
    notes = MACS_NOTE
    if any(c.latency_ms is not None for c in [*layers, *models]):
        import torch

        from .analysis.counting import DEFAULT_WARMUP

        notes += (f"\nms = median wall time per call, batch 1, over up to {repeats} calls after "
                  f"{DEFAULT_WARMUP} warm-up calls, {torch.get_num_threads()} CPU threads; "
                  "speed-up = standard / separable.")
    render = (lambda t: t.to_markdown()) if fmt == "markdown" else (lambda t: t.to_text())
    return "\n\n".join([notes] + [render(t) for t in tables])


# -- summary ---------------------------------------------------------------------------------


def _add_summary(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "summary", help="Keras model.summary()-style table: layer, output shape, params, MACs",
        description=f"Layer-by-layer table of a torchblocks model. {UNITS_NOTE}.",
    )
    p.add_argument("model", metavar="MODEL", help="a name from torchblocks.models (case-insensitive)")
    _add_input_size(p, "input size (default: 3 64 64, 3 299 299 for xception, 3 224 224)")
    p.add_argument("--depth", type=_positive_int, default=None,
                   help="show no module deeper than this (default: every layer)")
    _add_format(p)
    p.set_defaults(func=_summary)


def _summary(args: argparse.Namespace) -> int:
    import torch

    from . import models
    from .analysis import summary
    from .models import default_input_shape

    name = _model_name(args.model)
    shape = tuple(args.input_size) if args.input_size else default_input_shape(name)
    result = summary(models.get_model(name), torch.randn(1, *shape), depth=args.depth)
    table = result.table()
    if args.format == "json":
        print(json.dumps({"model": name, "input_shape": [1, *shape], "totals": result.report.to_dict(),
                          "layers": table.to_records()}, indent=2))
    elif args.format == "csv":
        from .analysis.tables import records_to_csv

        print(records_to_csv(table.to_records()).rstrip("\n"))
    elif args.format == "markdown":
        print(table.to_markdown(footer=result.footer()))
    else:
        print(result)
    return 0


# -- bench -----------------------------------------------------------------------------------


def _add_bench(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark against plain PyTorch, timm and Keras (ratios in one run)",
        description="Side-by-side benchmarks, reported as median ratios candidate / reference.",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (about a minute)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the report as JSON to FILE")
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    from . import bench

    report = bench.run(args.device, args.quick, args.threads)
    print(report.table())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(report.to_json() + "\n")
    return 0


# -- wiring ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``torchblocks`` parser with every subcommand."""
    parser = _Parser(prog="torchblocks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_compare(sub)
    _add_summary(sub)
    from .export import add_export_parser  # the export command's wiring lives beside the exporters

    add_export_parser(sub)
    _add_bench(sub)
    return parser


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``torchblocks`` command on ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    prefix = f"torchblocks {args.command}: error:"
    try:
        return args.func(args)
    except UsageError as error:
        print(f"{prefix} {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError, RuntimeError, ImportError, OSError) as error:
        print(f"{prefix} {_first_line(error)}", file=sys.stderr)
        return EXIT_FAILURE

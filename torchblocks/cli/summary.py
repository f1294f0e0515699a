"""``torchblocks summary``: a Keras ``model.summary()``-style table of a model."""
import argparse
import json

from ._common import (
    UNITS_NOTE, UsageError, add_format, add_input_size, is_model_spec, load_model_spec, model_name,
    positive_int,
)


def add_parser(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "summary", help="Keras model.summary()-style table: layer, output shape, params, MACs",
        description=f"Layer-by-layer table of a torchblocks model, or of your own. {UNITS_NOTE}.",
    )
    p.add_argument("model", metavar="MODEL",
                   help="a name from torchblocks.models (case-insensitive), or MODULE:ATTRIBUTE "
                        "naming your own nn.Module or a function returning one (e.g. mypkg.nets:build)")
    add_input_size(p, "input size (default: 3 64 64 for SeparableConvNet, 3 299 299 for xception, "
                      "3 224 224 otherwise; required with MODULE:ATTRIBUTE)")
    p.add_argument("--depth", type=positive_int, default=None,
                   help="show no module deeper than this (default: every layer)")
    add_format(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import models
    from ..analysis import summary
    from ..models import default_input_shape

    if is_model_spec(args.model):
        if args.input_size is None:
            raise UsageError(f"{args.model}: give its input size with --input-size C H W")
        name, model, shape = args.model, load_model_spec(args.model), tuple(args.input_size)
    else:
        name = model_name(args.model)
        shape = tuple(args.input_size) if args.input_size else default_input_shape(name)
        model = models.get_model(name)
    result = summary(model, torch.randn(1, *shape), depth=args.depth)
    table = result.table()
    if args.format == "json":
        print(json.dumps({"model": name, "input_shape": [1, *shape], "totals": result.report.to_dict(),
                          "layers": table.to_records()}, indent=2))
    elif args.format == "csv":
        from ..analysis.tables import records_to_csv

        print(records_to_csv(table.to_records()).rstrip("\n"))
    elif args.format == "markdown":
        print(table.to_markdown(footer=result.footer()))
    else:
        print(result)
    return 0

"""``torchblocks export``: export a torchblocks model (TorchScript, torch.export .pt2 or ONNX),
verified against eager mode."""
import argparse

from ._common import add_input_size, model_name, positive_int


def add_parser(sub: "argparse._SubParsersAction") -> None:
    from ..export import FORMATS
    from ..models import MODEL_NAMES

    p = sub.add_parser(
        "export", help="export a torchblocks model (TorchScript, torch.export .pt2 or ONNX), verified against eager",
        description=(
            "Build a torchblocks model, export it (TorchScript, torch.export .pt2 or ONNX), reload "
            f"the file and check it against eager mode. Models: {', '.join(MODEL_NAMES)}."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="a name from torchblocks.models (case-insensitive)")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--format", choices=FORMATS, default="torchscript", help="default torchscript")
    add_input_size(p, "example input size (default: 3 64 64 for SeparableConvNet, 3 299 299 for "
                      "xception, 3 224 224 otherwise)")
    p.add_argument("--batch", type=positive_int, default=2, help="example batch size (dynamic for exported/onnx)")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="classifier outputs (model default if omitted)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the model, export it to ``--out``, reload and verify it against eager mode."""
    import torch

    from .. import models
    from .._checks import writable_path
    from ..export import export_model

    name = model_name(args.model)
    writable_path(args.out)
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    size = args.input_size or models.default_input_shape(name)
    model = models.get_model(name, **kwargs).eval()
    x = torch.randn(args.batch, *size)
    export_model(model, args.out, x, args.format)
    print(f"wrote {args.out} ({args.format}, {name}, input {tuple(x.shape)}), verified against eager")
    return 0

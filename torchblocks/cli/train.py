"""``torchblocks train``: train a model on an image folder or the digits, alone or under torchrun."""
import argparse
import textwrap

from ._common import positive_int

EPILOG = """\
examples:
  torchblocks train --dataset digits --model SeparableConvNet --epochs 3 --init he
  torchblocks train photos/ --model resnet18 --input-size 3 128 128 --optimizer adam --log metrics.csv
  torchrun --nproc-per-node 2 -m torchblocks train --dataset digits --model SeparableConvNet --metrics m.csv
  torchblocks train --dataset digits --model SeparableConvNet --epochs 6 --resume
"""


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], received {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, received {text!r}")
    return value


def add_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register ``train`` on ``subparsers``."""
    from ..train import INITS, OPTIMIZERS

    p = subparsers.add_parser(
        "train",
        help="train a model (categorical cross-entropy; DDP under torchrun)",
        description=textwrap.fill(
            "Train a torchblocks model (or a module:attribute factory) on an image folder "
            "(ImageFolder layout: DATA/<class>/<image>) or on scikit-learn's bundled digits. "
            "Defaults follow the book's compile(optimizer='rmsprop', loss='categorical_crossentropy'). "
            "Under torchrun every process runs this same command (DDP; gloo on CPU, NCCL on GPU); "
            "rank 0 alone writes the checkpoint and the log.", 90
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("data", nargs="?", metavar="DATA", help="image folder: DATA/<class>/<image>")
    source.add_argument("--dataset", choices=("digits",), help="a bundled dataset instead of DATA")
    p.add_argument("--model", default="SeparableConvNet",
                   help="a torchblocks.models name or module:attribute building an nn.Module from "
                        "num_classes= (default %(default)s)")
    p.add_argument("--input-size", nargs=3, type=positive_int, metavar=("C", "H", "W"),
                   help="C (1 or 3), H, W the images are resized to (default: the model's, 3 64 64 "
                        "for SeparableConvNet and factories)")
    p.add_argument("--epochs", type=positive_int, default=10, help="epochs in all, resumed ones included (default 10)")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="global batch size, split over torchrun's processes (default 32)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="rmsprop",
                   help="rmsprop and adam follow Keras' update rules (torchblocks.optim) (default rmsprop)")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default: Keras' 1e-3 for rmsprop/adam, 1e-2 for sgd)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed (default 0)")
    p.add_argument("--train-fraction", type=_fraction, default=1.0,
                   help="train on this class-balanced fraction of the training split (default 1)")
    p.add_argument("--checkpoint", default="checkpoint.pt", metavar="PATH",
                   help="written atomically after every epoch (default %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint (same settings)")
    p.add_argument("--log", "--metrics", dest="log", metavar="FILE.csv",
                   help="per-epoch loss, val_loss, val_accuracy, seconds; under torchrun spell it --metrics "
                        "(torchrun's own parser refuses --log as an abbreviation of its --log-dir)")
    p.add_argument("--channels-last", action="store_true", help="model and inputs in channels-last memory format")
    p.add_argument("--amp", choices=("bf16",), help="automatic mixed precision in bfloat16")
    p.add_argument("--sync-bn", action="store_true",
                   help="synchronise BatchNorm over processes (torch's SyncBatchNorm on GPU, "
                        "torchblocks.SyncBatchNorm on CPU)")
    p.add_argument("--init", choices=INITS, default="he",
                   help="he: He-normal conv/linear weights, zero biases (default: from the model's own "
                        "initialisation the book's SeparableConvNet stays at chance on the digits); "
                        "model: keep the model's own; keras: Keras' Glorot-uniform, zero biases")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal anyway)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Train as ``args`` say; errors propagate to the command's one-line error path."""
    from ..train import TrainConfig, train

    train(TrainConfig(
        model=args.model, data=args.data, dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
        optimizer=args.optimizer, lr=args.lr, seed=args.seed,
        input_size=tuple(args.input_size) if args.input_size else None, train_fraction=args.train_fraction,
        checkpoint=args.checkpoint, resume=args.resume, log=args.log, channels_last=args.channels_last,
        amp=args.amp, sync_bn=args.sync_bn, init=args.init, device=args.device, workers=args.workers,
        progress=not args.no_progress,
    ))
    return 0

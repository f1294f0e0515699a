"""``torchblocks port``: a ``.keras`` file as a readable PyTorch module (OUT.py) and its state dict
(OUT.pt), checked layer by layer against the Keras model in a fresh process."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Any, List, Optional, Sequence, Tuple

from ._common import UsageError, positive_int

# From this many layers on, the stages are shown with a progress bar on stderr.
LARGE_MODEL_LAYERS = 50
_CHECK = "import sys; from torchblocks.cli.port import check; sys.exit(check(sys.argv[1:]))"


def add_parser(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "port", help="write a .keras model as a readable PyTorch module and state dict, verified",
        description=(
            "Convert a Keras .keras model file (loaded with Keras' safe_mode: no code in the file "
            "runs) into OUT.py, a readable PyTorch module with a build() function, and OUT.pt, its "
            "state dict; then import OUT.py in a fresh process and compare every layer with Keras. "
            "Nothing is written unless the conversion is exact."
        ),
    )
    p.add_argument("source", metavar="SRC", help="a Keras 3 .keras file")
    p.add_argument("--out", required=True, help="the .py file to write (the state dict goes beside it)")
    p.add_argument("--input-size", nargs=2, type=positive_int, metavar=("H", "W"), default=None,
                   help="image size for the check, needed where the model's input size is not fixed")
    p.add_argument("--batch", type=positive_int, default=2, help="batch size of the check (default 2)")
    p.add_argument("--table", action="store_true", help="print the per-layer error table")
    p.set_defaults(func=run)


def _check_paths(source: str, out: str) -> Tuple[str, str]:
    from .._checks import writable_path

    if not source.endswith(".keras"):
        raise ValueError(f"SRC must be a Keras 3 .keras file; received {source!r}")
    if not os.path.isfile(source):
        raise ValueError(f"no file at SRC {source!r}")
    if not zipfile.is_zipfile(source):
        raise ValueError(f"SRC {source!r} is not a .keras archive (a zip file)")
    if not out.endswith(".py"):
        raise UsageError(f"--out must name a .py file; received {out!r}")
    try:
        out = writable_path(out)
    except ValueError:
        raise ValueError(f"--out {out!r} is not a file in an existing, writable folder") from None
    return source, out


def _load(source: str) -> Any:
    """The Keras model in ``source``, loaded with ``safe_mode`` so that no code in it runs."""
    from .._checks import first_line
    from ..interop.keras.backend import import_keras

    keras = import_keras()
    try:
        return keras.saving.load_model(source, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many kinds on bad archives and refused layers
        raise ValueError(f"could not load {source!r}: {first_line(exc)}") from exc


def _input_shapes(model: Any, size: Optional[Sequence[int]], batch: int) -> List[List[int]]:
    """The shape of each input in the converted module's layout: (N, C, H, W) or (N, F)."""
    from ..interop.keras.backend import import_keras
    from ..interop.keras.verify import is_channels_first

    channels_first = is_channels_first(import_keras(), model)
    shapes = []
    for tensor in model.inputs:
        dims = list(tensor.shape[1:])
        name = tensor.name
        if len(dims) == 3:
            c, h, w = dims if channels_first else (dims[2], dims[0], dims[1])
            if size is not None:
                h, w = size
            if c is None or h is None or w is None:
                raise UsageError(
                    f"input {name!r} has shape {tuple(tensor.shape)}: pass --input-size H W for the "
                    f"check"
                )
            shapes.append([batch, c, h, w])
        elif len(dims) == 1 and dims[0] is not None:
            shapes.append([batch, dims[0]])
        else:
            raise ValueError(
                f"input {name!r} of shape {tuple(tensor.shape)} is neither an image (N, H, W, C) nor "
                f"a vector (N, F)"
            )
    return shapes


def check(argv: List[str]) -> int:
    """In a fresh process: import the written module, build it, verify it against the Keras model;
    print the result as one JSON line. ``argv``: SRC, the module file, the input shapes (JSON)."""
    import importlib.util

    import torch

    from .._checks import first_line
    from ..interop.keras.verify import verify

    source, module_path, shapes = argv[0], argv[1], json.loads(argv[2])
    try:
        spec = importlib.util.spec_from_file_location("torchblocks_port_check", module_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.build()
        generator = torch.Generator().manual_seed(0)
        inputs = []
        for shape in shapes:
            # Offsets per sample and channel keep pooled features apart (the check can fail).
            offsets = torch.randn(shape[:2] + [1] * (len(shape) - 2), generator=generator)
            inputs.append(torch.randn(shape, generator=generator) + offsets)
        report = verify(_load(source), model, tuple(inputs))
    except Exception as exc:  # reported to the parent as one line
        print(json.dumps({"error": f"{type(exc).__name__}: {first_line(exc)}"}))
        return 1
    print(json.dumps({"exact": report.exact, "summary": report.summary(), "table": report.table()}))
    return 0


def _check_in_fresh_process(source: str, module_path: str, shapes: List[List[int]]) -> dict:
    import torchblocks

    root = os.path.dirname(os.path.dirname(os.path.abspath(torchblocks.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    done = subprocess.run(
        [sys.executable, "-c", _CHECK, source, module_path, json.dumps(shapes)],
        capture_output=True, text=True, env=env,
    )
    lines = done.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(
            f"the check of the written module failed (exit {done.returncode}): {tail}"
        ) from None


def _layer_count(model: Any) -> int:
    return sum(_layer_count(layer) if hasattr(layer, "layers") else 1 for layer in model.layers)


def run(args: argparse.Namespace) -> int:
    """Load SRC, write OUT.py/OUT.pt to a temporary folder beside OUT, verify them in a fresh
    process, and move them into place only when the conversion is exact."""
    from ..interop.keras.backend import EXTRA_HINT
    from ..interop.keras.source import to_source

    try:
        from tqdm import tqdm
    except ImportError as exc:
        raise ImportError(f"torchblocks port shows progress with tqdm ({exc}). {EXTRA_HINT}") from exc

    source, out = _check_paths(args.source, args.out)
    weights = out[: -len(".py")] + ".pt"
    model = _load(source)
    shapes = _input_shapes(model, args.input_size, args.batch)
    staging = tempfile.mkdtemp(prefix=".port-", dir=os.path.dirname(os.path.abspath(out)))
    small = _layer_count(model) < LARGE_MODEL_LAYERS
    bar = dict(desc="port", unit="stage", file=sys.stderr, leave=False, disable=small)
    with tqdm(total=2, **bar) as stages:
        try:
            stages.set_postfix_str("convert and write")
            written = to_source(model, os.path.join(staging, os.path.basename(out)))
            stages.update()
            stages.set_postfix_str("verify in a fresh process")
            result = _check_in_fresh_process(source, written.module_path, shapes)
            stages.update()
            if "error" in result:
                raise RuntimeError(f"the written module failed its check: {result['error']}")
            if not result["exact"]:
                print(result["table"], file=sys.stderr)
                raise ValueError(f"{result['summary']}; nothing written")
            os.replace(written.weights_path, weights)
            try:
                os.replace(written.module_path, out)
            except OSError:
                os.unlink(weights)
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if args.table:
        print(result["table"])
    print(result["summary"])
    print(f"wrote {out} and {weights} (class {written.class_name}; build() loads the weights)")
    return 0

"""``torchblocks bench``: side-by-side benchmarks against plain PyTorch, timm and Keras."""
import argparse

from ._common import positive_int

# The sections of torchblocks.bench.SECTIONS (importing it here would load torch for --help).
SECTION_NAMES = ("layers", "separable", "xception", "compile", "training", "memory")
# Measured on 2 shared cores (BENCHMARKS.md): what --help promises.
QUICK_DURATION = "about 2 minutes on 2 cores"


def add_parser(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark against plain PyTorch, timm and Keras (ratios in one run)",
        description="Side-by-side benchmarks, reported as median ratios candidate / reference.",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    p.add_argument("--quick", action="store_true", help=f"small sizes and few repeats ({QUICK_DURATION})")
    p.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the report as JSON to FILE")
    p.add_argument("--section", action="append", choices=SECTION_NAMES, default=None, dest="sections",
                   help="run only this section (repeatable; default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr (it shows only on a terminal)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import bench
    from .._checks import writable_path

    if args.json:
        # Checked before a run of minutes, not after it.
        try:
            writable_path(args.json)
        except ValueError as exc:
            raise ValueError(f"--json: {exc}") from None
    report = bench.run(args.device, args.quick, args.threads, progress=not args.no_progress, sections=args.sections)
    print(report.table())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(report.to_json() + "\n")
    return 0

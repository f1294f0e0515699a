"""The ``torchblocks compare`` job: separable vs standard convolution, single layers and models.

Single layers: ``SeparableConv2d(C, C, k, stride, 'same')`` against the full ``Conv2d`` of the
same shape, over a grid of C, k and stride on a (1, C, H, W) input. Models: each separable model
against its standard counterpart (``standard_counterpart``), and a ResNet with
``conv="separable"`` against the standard ResNet.
"""
import contextlib
import os
import tempfile
from typing import ContextManager, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..conv import DepthwiseConv2d, SeparableConv2d
from ..models import default_input_shape
from .comparison import Comparison, compare
from .counterpart import build_counterpart
from .meta import MetaCountError, meta_device, to_meta
from .tables import Column, Table

DEFAULT_CHANNELS = (32, 64, 128, 256, 512)
DEFAULT_KERNEL_SIZES = (3, 5, 7)
DEFAULT_STRIDES = (1, 2)
DEFAULT_LAYER_SIZE = (56, 56)
DEFAULT_MODELS = ("SeparableConvNet", "xception", "resnet50")
Shape = Tuple[int, ...]


def layer_name(channels: int, kernel_size: int, stride: int) -> str:
    """Row label of one grid point, e.g. ``"C=64 k=3 s=2"``."""
    return f"C={channels} k={kernel_size} s={stride}"


def layer_grid(
    channels: Sequence[int] = DEFAULT_CHANNELS,
    kernel_sizes: Sequence[int] = DEFAULT_KERNEL_SIZES,
    strides: Sequence[int] = DEFAULT_STRIDES,
) -> List[Tuple[int, int, int]]:
    """Grid points (C, k, stride), channels varying slowest."""
    return [(c, k, s) for c in channels for k in kernel_sizes for s in strides]


def _building(latency: bool) -> ContextManager[None]:
    """Where to build what is only counted: on the meta device (no weights to initialise, no
    arithmetic), unless it is also timed."""
    return contextlib.nullcontext() if latency else meta_device()


def compare_layer(
    channels: int, kernel_size: int, stride: int, size: Tuple[int, int] = DEFAULT_LAYER_SIZE,
    *, latency: bool = False, repeats: int = 10,
) -> Comparison:
    """``SeparableConv2d(C, C, k, stride, 'same')`` against its full ``Conv2d`` on (1, C, H, W)."""
    with _building(latency):
        layer = SeparableConv2d(channels, channels, kernel_size, stride, "same")
        x = torch.empty(1, channels, *size).normal_()
    return compare(layer, x, latency=latency, name=layer_name(channels, kernel_size, stride),
                   repeats=repeats)


def _has_separable(model: nn.Module) -> bool:
    return any(isinstance(m, (SeparableConv2d, DepthwiseConv2d)) for m in model.modules())


def model_pair(name: str) -> Tuple[nn.Module, Optional[nn.Module], str, str]:
    """(separable model, standard model, their labels) for the ``torchblocks.models`` ``name``.

    A model with separable or depthwise layers is paired with its ``standard_counterpart``
    (returned as None: ``compare`` builds it); one without (a standard ResNet) is paired as
    ``get_model(name, conv="separable")`` against it.

    Raises:
        ValueError: unknown name, or a model with no separable variant.
    """
    from .. import models

    model = models.get_model(name)
    if _has_separable(model):
        return model, None, name, "standard_counterpart"
    try:
        separable = models.get_model(name, conv="separable")
    except TypeError as error:
        raise ValueError(
            f"Invalid value for argument `model`. {name!r} has no separable convolution and no "
            f'conv="separable" variant to compare with.'
        ) from error
    return separable, model, f'{name}(conv="separable")', f'{name}(conv="standard")'


def _compare_named(name: str, shape: Shape, latency: bool, repeats: int, building: ContextManager[None]) -> Comparison:
    with building:
        separable, standard, separable_name, standard_name = model_pair(name)
        x = torch.empty(1, *shape).normal_()
    return compare(separable, x, standard, latency=latency, name=separable_name,
                   counterpart_name=standard_name, repeats=repeats)


def compare_model(
    model: Union[str, nn.Module], input_shape: Optional[Shape] = None, *, latency: bool = False,
    repeats: int = 10, name: Optional[str] = None,
) -> Comparison:
    """Compare a model with its standard-convolution version.

    A torchblocks model that is only counted (``latency=False``) is built on the meta device.

    Args:
        model: a name from ``torchblocks.models.MODEL_NAMES`` (case-insensitive), or a module of
            one's own, compared with its ``standard_counterpart``.
        input_shape: (C, H, W) of the batch-1 input; default ``default_input_shape(name)`` for a
            torchblocks model, required for a module.
        name: the row label of a module (default its class name).

    Raises:
        ValueError: a module without ``input_shape``, or with nothing to replace (no separable,
            depthwise or grouped convolution: its counterpart would be itself).
    """
    if isinstance(model, str):
        shape = tuple(input_shape) if input_shape is not None else default_input_shape(model)
        try:
            return _compare_named(model, shape, latency, repeats, _building(latency))
        except MetaCountError:  # a model that cannot be counted on meta: build and run it for real
            return _compare_named(model, shape, latency, repeats, contextlib.nullcontext())
    label = name or type(model).__name__
    if input_shape is None:
        raise ValueError(f"Invalid value for argument `input_shape`. {label} is not a torchblocks "
                         "model: give the (C, H, W) of its input.")
    try:
        probe = to_meta(model)  # what would be replaced, without copying any weights
    except MetaCountError:
        probe = model
    if not build_counterpart(probe).replaced:
        raise ValueError(f"{label} has no SeparableConv2d and no depthwise or grouped convolution: "
                         "its standard counterpart would be the model itself.")
    return compare(model, torch.randn(1, *input_shape), latency=latency, name=label, repeats=repeats)


SHORT = "sep = separable, std = standard; each ratio is sep/std: below 1, the separable side needs less."


def _columns(first: Column, latency: bool, theory: bool, wide: bool) -> List[Column]:
    columns = [first]
    if wide or not latency:
        columns += [Column("params sep", "params", "int"), Column("params std", "counterpart_params", "int")]
    columns += [
        Column("MACs sep", "macs", "macs"),
        Column("MACs std", "counterpart_macs", "macs"),
        Column("MACs sep/std", "macs_ratio", "ratio"),
    ]
    if theory:
        columns.append(Column("theory", "theoretical_ratio", "ratio"))
    if latency:
        columns += [
            Column("ms sep", "latency_ms", "ms"),
            Column("ms std", "counterpart_latency_ms", "ms"),
            Column("time sep/std", "time_ratio", "ratio"),
        ]
    return columns


def comparison_table(
    title: str, comparisons: Iterable[Comparison], *, layers: bool, wide: bool = False
) -> Table:
    """A table of comparisons: layers show the theoretical ratio, models (with ``wide``) their
    input shape and standard version. By default it fits 100 columns: with latencies, the
    parameter columns are left to ``wide``."""
    comparisons = list(comparisons)
    latency = any(c.latency_ms is not None for c in comparisons)
    first = Column("layer" if layers else "model", "name")
    columns = _columns(first, latency, theory=layers, wide=wide)
    if wide and not layers:
        columns.insert(1, Column("input", "input_shape"))
        columns.insert(2, Column("standard version", "counterpart"))
    rows = []
    for c in comparisons:
        record = c.to_dict()
        if not layers:
            record["input_shape"] = "x".join(str(d) for d in record["input_shape"])
        rows.append([record[col.key] for col in columns])
    return Table(title, columns, rows)


def check_plot_path(path: str) -> str:
    """``path`` if a figure can be saved there: a file in a writable folder, with a suffix
    matplotlib writes, and matplotlib installed; else ``ValueError``/``ImportError``."""
    from .._checks import writable_path

    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError as error:
        raise ImportError('Plotting needs matplotlib: pip install "torchblocks[plot]"') from error
    path = writable_path(path)
    suffix = os.path.splitext(path)[1].lstrip(".").lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix not in formats:
        raise ValueError(
            f"Invalid value for argument `path`. Expected a file name ending in one of "
            f"{', '.join('.' + f for f in sorted(formats))}. Received path={path!r}."
        )
    return path


def plot_channel_sweep(path: str, comparisons: Sequence[Comparison], channels: Sequence[int], title: str) -> None:
    """Save a figure (PNG for ``.png``): MACs and measured time against channels.

    The file is written whole or not at all (a temporary file beside it, then renamed).

    Args:
        path: the file to write; its suffix gives the format.
        comparisons: one grid row per channel count (one kernel size and stride), with
            latencies measured.
        channels: the C of each row (the x axis).
        title: the figure title, saying the kernel, stride and input size.
    """
    if any(c.time_ratio is None for c in comparisons):
        raise ValueError("plot_channel_sweep needs comparisons with measured latencies (latency=True).")
    path = check_plot_path(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_macs, ax_time) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    series = (
        (ax_macs, [c.model.macs for c in comparisons], [c.counterpart.macs for c in comparisons],
         "MACs (fused multiply-adds)", "MACs"),
        (ax_time, [c.latency_ms for c in comparisons], [c.counterpart_latency_ms for c in comparisons],
         "median CPU time (ms)", "measured time"),
    )
    for ax, separable, standard, ylabel, heading in series:
        ax.plot(channels, separable, "o-", label="separable")
        ax.plot(channels, standard, "s-", label="standard")
        ax.set(xscale="log", yscale="log", xlabel="channels C (C_in = C_out)", ylabel=ylabel,
               title=heading)
        ax.set_xticks(list(channels), [str(c) for c in channels])
        ax.minorticks_off()
        ax.legend()
        ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    suffix = os.path.splitext(path)[1]
    handle, temporary = tempfile.mkstemp(suffix=suffix, prefix=".tmp-", dir=os.path.dirname(os.path.abspath(path)))
    os.close(handle)
    try:
        fig.savefig(temporary, dpi=100, format=suffix.lstrip(".").lower())
        os.replace(temporary, path)
    finally:
        plt.close(fig)
        if os.path.exists(temporary):
            os.remove(temporary)

"""Reading Keras weights into uniform records: from a layer, a model, a ``.keras`` file or a
``.weights.h5`` file (h5py alone, no Keras)."""
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .backend import import_h5py, import_keras

# Keras layer kinds that carry weights, keyed by the snake-case class name Keras 3 uses for the
# groups of a .weights.h5 file ("conv2d", "conv2d_1", ...), with the Keras class name for messages.
H5_KINDS: Dict[str, Tuple[str, str]] = {
    "conv2d": ("conv", "Conv2D"),
    "depthwise_conv2d": ("depthwise", "DepthwiseConv2D"),
    "separable_conv2d": ("separable", "SeparableConv2D"),
    "batch_normalization": ("bn", "BatchNormalization"),
    "dense": ("dense", "Dense"),
}
# Variable order within a layer's group of a .weights.h5 file (Keras saves trainable, then
# non-trainable variables, in creation order).
_H5_VAR_ROLES: Dict[str, Tuple[str, ...]] = {
    "conv": ("kernel", "bias"),
    "depthwise": ("kernel", "bias"),
    "separable": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "dense": ("kernel", "bias"),
}


@dataclass
class KerasRecord:
    """One Keras layer's weights, from a layer object or from a .weights.h5 group."""

    name: str
    class_name: str
    kind: str  # "conv" | "depthwise" | "separable" | "bn" | "dense" | "" (unsupported)
    arrays: Dict[str, np.ndarray]
    config: Optional[Dict[str, Any]]  # None when read from a .weights.h5 file
    problem: str = ""  # set when the record itself cannot be used


def _keras_kind(keras: Any, layer: Any) -> str:
    layers = keras.layers
    for cls, kind in (
        (layers.SeparableConv2D, "separable"),
        (layers.DepthwiseConv2D, "depthwise"),
        (layers.Conv2D, "conv"),
        (layers.BatchNormalization, "bn"),
        (layers.Dense, "dense"),
    ):
        if isinstance(layer, cls):
            return kind
    return ""


def record_from_layer(keras: Any, layer: Any) -> KerasRecord:
    """The record of one built Keras layer, with its config."""
    arrays = {v.name: np.asarray(keras.ops.convert_to_numpy(v)) for v in layer.weights}
    return KerasRecord(layer.name, type(layer).__name__, _keras_kind(keras, layer), arrays, layer.get_config())


def records_from_model(keras: Any, model: Any) -> List[KerasRecord]:
    """Weighted layers in ``model.layers`` order, nested models flattened in place."""
    records: List[KerasRecord] = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            records.extend(records_from_model(keras, layer))
        elif layer.weights:
            records.append(record_from_layer(keras, layer))
    return records


def _h5_roles(kind: str, count: int) -> Tuple[Optional[Tuple[str, ...]], str]:
    """Names of a layer's ``count`` saved variables, or a problem where they cannot be told apart."""
    if kind == "bn":
        if count == 4:
            return ("gamma", "beta", "moving_mean", "moving_variance"), ""
        if count == 2:
            return ("moving_mean", "moving_variance"), ""
        if count == 3:
            return None, (
                "3 saved variables: a .weights.h5 file cannot tell whether gamma (scale=False) or "
                "beta (center=False) is missing; pass the Keras model or a .keras file instead"
            )
    else:
        roles = _H5_VAR_ROLES[kind]
        minimum = len(roles) - 1
        if minimum <= count <= len(roles):
            return roles[:count], ""
    return None, f"unexpected number of saved variables ({count})"


def _records_from_h5(path: str) -> List[KerasRecord]:
    """Weighted layers of a Keras 3 ``.weights.h5`` file of a Sequential or Functional model.

    Keras names each layer's group after its class, numbered in ``model.layers`` order
    (``conv2d``, ``conv2d_1``, ...), so the order within each layer kind is known, but not the
    order across kinds; layer configs (strides, padding, epsilon, momentum) are not in the file.
    """
    h5py = import_h5py()
    try:
        with h5py.File(path, "r") as f:
            if "layers" not in f:
                raise ValueError(
                    "no top-level 'layers' group: not the .weights.h5 file of a Keras 3 Sequential "
                    "or Functional model"
                )
            entries = []
            for key, group in f["layers"].items():
                match = re.fullmatch(r"(.+?)(?:_(\d+))?", key)
                base, index = match.group(1), int(match.group(2) or 0)
                if "layers" in group:
                    raise ValueError(
                        f"layer group {key!r} is a nested model, whose layer order a .weights.h5 "
                        f"file does not record; pass the Keras model or a .keras file instead"
                    )
                variables = group.get("vars")
                if variables is None or len(variables) == 0:
                    continue
                name = variables.attrs.get("name", key)
                name = name.decode() if isinstance(name, bytes) else str(name)
                arrays = [np.asarray(variables[str(i)]) for i in range(len(variables))]
                entries.append((base, index, name, arrays))
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise ValueError(f"Could not read the Keras weights file {path!r}: {exc}") from exc
    records = []
    for base, _, name, arrays in sorted(entries, key=lambda e: (e[0], e[1])):
        kind, class_name = H5_KINDS.get(base, ("", base))
        record = KerasRecord(name, class_name, kind, {}, None)
        if kind:
            roles, problem = _h5_roles(kind, len(arrays))
            if roles is None:
                record.problem = problem
            else:
                record.arrays = dict(zip(roles, arrays))
        records.append(record)
    return records


def read_source(source: Any) -> List[KerasRecord]:
    """Keras weight records of ``source``: a path, a model or a single layer."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No Keras file at {path!r}.")
        if path.endswith(".h5"):
            return _records_from_h5(path)
        if path.endswith(".keras"):
            keras = import_keras()
            try:
                model = keras.saving.load_model(path, compile=False)
            except Exception as exc:  # keras raises many kinds on a corrupt archive
                raise ValueError(f"Could not read the Keras model file {path!r}: {exc}") from exc
            return records_from_model(keras, model)
        raise ValueError(
            f"Invalid value for argument `keras_layer_or_model_or_path`. Expected a .keras or "
            f".weights.h5 file. Received {path!r}."
        )
    keras = import_keras()
    if isinstance(source, keras.Model):
        return records_from_model(keras, source)
    if isinstance(source, keras.layers.Layer):
        if not source.weights:
            raise ValueError(
                f"Keras layer {source.name!r} ({type(source).__name__}) has no weights; build it "
                f"(call it on an input) before loading."
            )
        return [record_from_layer(keras, source)]
    raise TypeError(
        f"Invalid type for argument `keras_layer_or_model_or_path`. Expected a Keras layer or "
        f"model, or a path. Received an object of type {type(source).__name__}."
    )


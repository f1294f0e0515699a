"""Reading Keras weights into uniform records: from a layer, a model, a ``.keras`` file or a
``.weights.h5`` file (h5py alone, no Keras).

A ``.keras`` file is loaded with Keras' ``safe_mode`` on: a file whose ``Lambda`` layer carries
Python bytecode is refused and none of its code runs. Malformed and truncated files raise
``ValueError`` naming the file and the place inside it.
"""
import os
import re
import zipfile
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .backend import import_h5py, import_keras

# Keras class -> kind of the layers that carry weights; a .weights.h5 file names each layer's
# group after the snake-case class ("conv2d", "conv2d_1", ...).
KINDS: Dict[str, str] = {
    "Conv2D": "conv", "DepthwiseConv2D": "depthwise", "SeparableConv2D": "separable",
    "Conv2DTranspose": "transpose", "BatchNormalization": "bn", "Dense": "dense",
    "LayerNormalization": "layernorm", "Normalization": "normalization", "LayerScale": "layerscale",
}
H5_CLASSES: Dict[str, str] = {re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", name).lower(): name for name in KINDS}
# Variable order within a layer's group of a .weights.h5 file (Keras saves trainable, then
# non-trainable variables, in creation order); the last may be absent (use_bias=False).
_H5_VAR_ROLES: Dict[str, Tuple[str, ...]] = {
    "conv": ("kernel", "bias"),
    "depthwise": ("kernel", "bias"),
    "transpose": ("kernel", "bias"),
    "separable": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "dense": ("kernel", "bias"),
    "layerscale": ("gamma",),
}
_KERAS_MEMBERS = ("config.json", "model.weights.h5")


@dataclass
class KerasRecord:
    """One Keras layer's weights, from a layer object or from a .weights.h5 group."""

    name: str
    class_name: str
    kind: str  # a value of KINDS, or "" (unsupported)
    arrays: Dict[str, np.ndarray]
    config: Optional[Dict[str, Any]]  # None when read from a .weights.h5 file
    problem: str = ""  # set when the record itself cannot be used
    source: str = ""  # the file it was read from, "" for a layer object
    group: str = ""  # its group inside a .weights.h5 file
    paths: Dict[str, str] = field(default_factory=dict)  # role -> dataset inside the file
    nested: bool = False  # read from a nested model's group of a .weights.h5 file

    @property
    def where(self) -> str:
        return f", {self.source}:{self.group}" if self.source else ""

    def path_of(self, role: str) -> str:
        return f" ({self.source}:{self.paths[role]})" if role in self.paths else ""

    def permuted(self, index: np.ndarray) -> "KerasRecord":
        """The record with the rows of a Dense kernel (all vectors of a BatchNormalization) in
        ``index`` order: the features of a Flatten kept in torch's order."""
        roles = ["kernel"] if self.kind == "dense" else [r for r in self.arrays if r != "count"]
        arrays = dict(self.arrays)
        for role in roles:
            if arrays[role].shape[0] != len(index):
                return replace(self, problem=(
                    f"{role}{self.path_of(role)} has {arrays[role].shape[0]} rows, the Flatten before it "
                    f"gives {len(index)} features"
                ))
            arrays[role] = arrays[role][index]
        return replace(self, arrays=arrays)


def _keras_kind(keras: Any, layer: Any) -> str:
    layers = keras.layers
    for cls, kind in (
        (layers.SeparableConv2D, "separable"),
        (layers.DepthwiseConv2D, "depthwise"),
        (layers.Conv2DTranspose, "transpose"),
        (layers.Conv2D, "conv"),
        (layers.BatchNormalization, "bn"),
        (layers.Dense, "dense"),
        (layers.LayerNormalization, "layernorm"),
        (layers.Normalization, "normalization"),
    ):
        if isinstance(layer, cls):
            return kind
    cls = type(layer)
    return KINDS.get(cls.__name__, "") if cls.__module__.startswith("keras.") else ""


def record_from_layer(keras: Any, layer: Any) -> KerasRecord:
    """The record of one built Keras layer, with its config."""
    kind = _keras_kind(keras, layer)
    if kind == "normalization":
        # Its mean and variance: adapted variables, or constants of the config (no variables).
        arrays = {
            role: np.asarray(keras.ops.convert_to_numpy(getattr(layer, role))).reshape(-1)
            for role in ("mean", "variance")
        }
    elif kind == "layerscale":
        # Keras' ConvNeXt creates its one factor without a name.
        arrays = {"gamma": np.asarray(keras.ops.convert_to_numpy(layer.weights[0]))} if layer.weights else {}
    else:
        arrays = {v.name: np.asarray(keras.ops.convert_to_numpy(v)) for v in layer.weights}
    return KerasRecord(layer.name, type(layer).__name__, kind, arrays, layer.get_config())


def records_from_model(keras: Any, model: Any) -> List[KerasRecord]:
    """Weighted layers in ``model.layers`` order, nested models flattened in place."""
    records: List[KerasRecord] = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            records.extend(records_from_model(keras, layer))
        elif layer.weights or _keras_kind(keras, layer) == "normalization":
            records.append(record_from_layer(keras, layer))
    return records


def _h5_roles(kind: str, count: int) -> Tuple[Optional[Tuple[str, ...]], str]:
    """Names of a layer's ``count`` saved variables, or a problem where they cannot be told apart."""
    ambiguous = (
        f"{count} saved variable(s): a .weights.h5 file cannot tell whether gamma (scale=False) or "
        f"beta (center=False) is missing; pass the Keras model or a .keras file instead"
    )
    if kind == "bn":
        known = {4: ("gamma", "beta", "moving_mean", "moving_variance"), 2: ("moving_mean", "moving_variance")}
        if count in known:
            return known[count], ""
        if count == 3:
            return None, ambiguous
    elif kind == "layernorm":
        if count == 2:
            return ("gamma", "beta"), ""
        if count == 1:
            return None, ambiguous
    elif kind == "normalization":
        if count == 3:
            return ("mean", "variance", "count"), ""
        if count == 0:
            return (), ""  # mean and variance given in the config: nothing saved
    else:
        roles = _H5_VAR_ROLES[kind]
        if max(len(roles) - 1, 1) <= count <= len(roles):
            return roles[:count], ""
    return None, f"unexpected number of saved variables ({count})"


def _h5_variables(h5py: Any, group: Any, where: str) -> List[Any]:
    variables = group.get("vars")
    if variables is None:
        return []
    if not isinstance(variables, h5py.Group):
        raise ValueError(f"at {where}/vars: expected a group of variables, found a {type(variables).__name__}")
    datasets = []
    for i in range(len(variables)):
        item = variables.get(str(i))
        if not isinstance(item, h5py.Dataset):
            raise ValueError(f"at {where}/vars/{i}: expected a dataset, found {type(item).__name__}")
        datasets.append(item)
    return datasets


def _h5_record(h5py: Any, path: str, key: str, group: Any, where: str, nested: bool) -> KerasRecord:
    match = re.fullmatch(r"(.+?)(?:_(\d+))?", key)
    class_name = H5_CLASSES.get(match.group(1), match.group(1))
    variables = group.get("vars")
    name = variables.attrs.get("name", key) if isinstance(variables, h5py.Group) else key
    name = name.decode() if isinstance(name, bytes) else str(name)
    record = KerasRecord(name, class_name, KINDS.get(class_name, ""), {}, None, source=path, group=where, nested=nested)
    datasets = _h5_variables(h5py, group, where)
    roles, problem = _h5_roles(record.kind, len(datasets)) if record.kind else ((), "")
    if roles is None:
        record.problem = problem
        return record
    for role, dataset in zip(roles, datasets):
        record.paths[role] = dataset.name.lstrip("/")
        if role == "count":
            continue
        if dataset.dtype.kind != "f":
            record.problem = f"{role}{record.path_of(role)} holds {dataset.dtype} values, not floating-point numbers"
            return record
        record.arrays[role] = np.asarray(dataset[()])
    return record


def _walk_h5(h5py: Any, path: str, layers: Any, prefix: str, nested: bool, out: List[Tuple[str, int, KerasRecord]]) -> None:
    if not isinstance(layers, h5py.Group):
        raise ValueError(f"at {prefix}: expected a group of layers, found a {type(layers).__name__}")
    for key in layers:
        group = layers[key]
        where = f"{prefix}/{key}"
        if not isinstance(group, h5py.Group):
            raise ValueError(f"at {where}: expected a layer's group, found a {type(group).__name__}")
        if "layers" in group:
            _walk_h5(h5py, path, group["layers"], f"{where}/layers", True, out)
            continue
        record = _h5_record(h5py, path, key, group, where, nested)
        if record.kind or _h5_variables(h5py, group, where):
            match = re.fullmatch(r"(.+?)(?:_(\d+))?", key)
            out.append((f"{prefix}/{match.group(1)}", int(match.group(2) or 0), record))


def _records_from_h5(path: str) -> List[KerasRecord]:
    """Layers of a Keras 3 ``.weights.h5`` file of a Sequential or Functional model.

    Keras names each layer's group after its class, numbered in ``model.layers`` order
    (``conv2d``, ``conv2d_1``, ...), so the order within each layer kind is known, but not the
    order across kinds; layer configs (strides, padding, epsilon, momentum) are not in the file.
    Each group's ``vars`` carries the Keras layer's name.
    """
    h5py = import_h5py()
    entries: List[Tuple[str, int, KerasRecord]] = []
    try:
        with h5py.File(path, "r") as f:
            if "layers" not in f:
                raise ValueError(
                    "no top-level 'layers' group: not the .weights.h5 file of a Keras 3 Sequential "
                    "or Functional model"
                )
            _walk_h5(h5py, path, f["layers"], "layers", False, entries)
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise ValueError(f"Could not read the Keras weights file {path!r}: {exc}") from exc
    return [record for _, _, record in sorted(entries, key=lambda e: (e[0], e[1]))]


def _check_archive(path: str) -> None:
    """A .keras file must be a readable zip holding Keras' config and weights."""
    try:
        with zipfile.ZipFile(path) as archive:
            missing = [m for m in _KERAS_MEMBERS if m not in archive.namelist()]
            if missing:
                raise ValueError(f"the archive has no {', '.join(missing)}: not a Keras 3 .keras file")
            broken = archive.testzip()
            if broken is not None:
                raise ValueError(f"{broken} inside the archive is corrupt (truncated or damaged file)")
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"not a readable zip archive ({exc}): a truncated or damaged .keras file") from exc


def load_keras_file(path: str) -> Any:
    """The Keras model of a ``.keras`` file, loaded with Keras' ``safe_mode`` on (no Lambda
    bytecode runs) and without compiling it.

    Raises:
        ValueError: naming the file and what in it could not be read.
    """
    keras = import_keras()
    try:
        _check_archive(path)
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many kinds on a corrupt or unsafe archive
        raise ValueError(f"Could not read the Keras model file {path!r}: {exc}") from exc


def read_source(source: Any) -> List[KerasRecord]:
    """Keras weight records of ``source``: a path, a model or a single layer."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No Keras file at {path!r}.")
        if path.endswith(".h5"):
            return _records_from_h5(path)
        if path.endswith(".keras"):
            return records_from_model(import_keras(), load_keras_file(path))
        raise ValueError(
            f"Invalid value for argument `keras_layer_or_model_or_path`. Expected a .keras or "
            f".weights.h5 file. Received {path!r}."
        )
    keras = import_keras()
    if isinstance(source, keras.Model):
        return records_from_model(keras, source)
    if isinstance(source, keras.layers.Layer):
        if not source.weights and _keras_kind(keras, source) != "normalization":
            raise ValueError(
                f"Keras layer {source.name!r} ({type(source).__name__}) has no weights; build it "
                f"(call it on an input) before loading."
            )
        return [record_from_layer(keras, source)]
    raise TypeError(
        f"Invalid type for argument `keras_layer_or_model_or_path`. Expected a Keras layer or "
        f"model, or a path. Received an object of type {type(source).__name__}."
    )

"""``to_source``: a Keras model written out as a readable PyTorch module and its state dict.

The model is converted with ``from_keras``; its graph becomes one ``nn.Module`` class (one more
per nested Keras model), with one named submodule per Keras layer in ``__init__`` and one line per
layer call in ``forward``. Each submodule's constructor call comes from the writer registered for
its class (``writers.WRITERS``); the written code is run and compared with the converted module,
submodule by submodule, before anything is saved.
"""
import builtins
import keyword
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import torch
import torch.fx

from ..._checks import writable_path
from . import layers as keras_layers
from .backend import import_keras
from .convert import from_keras
from .verify import is_channels_first
from .writers import Call, write

__all__ = ["SourceFiles", "to_source"]

MAX_COLUMNS = 100
# Names the written module may bind at the top level, which a model class must not take.
_MODULE_NAMES = (
    ("Tensor", "Optional", "Tuple", "build", "torch", "nn", "tb", "os", "HardSigmoid", "Exponential")
    + tuple(keras_layers.__all__)
)


class SourceFiles(NamedTuple):
    """What ``to_source`` wrote: the module file, the state dict file and the model class name."""

    module_path: str
    weights_path: str
    class_name: str


class _Names:
    """Unique Python identifiers: no keyword (no builtin either, for class names), none twice."""

    def __init__(self, reserved: Sequence[str] = ()) -> None:
        self.taken: Set[str] = set(reserved)

    def take(self, wanted: str, camel: bool = False) -> str:
        if camel:
            base = "".join(p[:1].upper() + p[1:] for p in re.split(r"[\W_]+", wanted) if p) or "Model"
        else:
            base = re.sub(r"\W", "_", wanted) or "layer"
        if base[0].isdigit():
            base = ("Model" if camel else "layer_") + base
        name, i = base, 1
        while name in self.taken or keyword.iskeyword(name) or (camel and hasattr(builtins, name)):
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name


def _wrapped(head: str, items: Sequence[str], tail: str, indent: int) -> List[str]:
    """``head + ', '.join(items) + tail`` on one line where it fits in ``MAX_COLUMNS``, else the
    items packed on lines of their own between ``head`` and ``tail``."""
    pad = " " * indent
    one = pad + head + ", ".join(items) + tail
    if len(one) <= MAX_COLUMNS or not items:
        return [one]
    lines, current = [pad + head.rstrip()], ""
    for item in items:
        if current and len(pad) + 4 + len(current) + len(item) + 2 > MAX_COLUMNS:
            lines.append(pad + "    " + current.rstrip())
            current = ""
        current += item + ", "
    lines.append(pad + "    " + current.rstrip()[:-1] + ",")
    lines.append(pad + tail.strip())
    return lines


def _node_inputs(args: Any) -> List[torch.fx.Node]:
    found: List[torch.fx.Node] = []
    for a in args:
        if isinstance(a, (list, tuple)):
            found.extend(_node_inputs(a))
        elif isinstance(a, torch.fx.Node):
            found.append(a)
    return found


@dataclass
class _Class:
    """One written class: its lines and the imports they need."""

    lines: List[str]
    imports: Set[str]


def _keras_layers(gm: torch.fx.GraphModule) -> Dict[str, Tuple[str, str]]:
    """Submodule name -> (Keras layer name, Keras class), from the converted graph's node meta."""
    found: Dict[str, Tuple[str, str]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            meta = (node.meta.get("keras_layer", str(node.target)), node.meta.get("keras_class", "?"))
            found.setdefault(str(node.target), meta)
        elif node.op not in ("placeholder", "output"):
            raise NotImplementedError(
                f"to_source: a {node.op} node ({node.target}) has no source form; to_source writes "
                f"the graphs from_keras builds, which only call submodules."
            )
    return found


def _init_lines(
    gm: torch.fx.GraphModule, attr: Dict[str, str], classes: _Names, out: List[_Class]
) -> Tuple[List[str], Set[str]]:
    """``__init__``: one commented constructor call per submodule (nested models written first)."""
    keras_of = _keras_layers(gm)
    lines = ["    def __init__(self) -> None:", "        super().__init__()"]
    imports: Set[str] = set()
    for name, child in gm.named_children():
        layer, layer_class = keras_of.get(name, (name, "?"))
        what = f"Keras layer {layer!r} ({layer_class})"
        if isinstance(child, torch.fx.GraphModule):
            nested = classes.take(layer, camel=True)
            _write_class(child, nested, f"The nested Keras model {layer!r}.", classes, out)
            expr = Call(nested, (), frozenset())
        else:
            expr = write(child, what)
        imports |= expr.imports
        lines.append(f"        # {what}")
        lines.extend(_wrapped(f"self.{attr[name]} = {expr.callee}(", expr.args, ")", 8))
        if not isinstance(child, torch.fx.GraphModule):
            for pname, parameter in child.named_parameters():
                if not parameter.requires_grad:  # a weight Keras does not have: it stays fixed
                    lines.append(f"        self.{attr[name]}.{pname}.requires_grad_(False)")
    return lines, imports


def _forward_lines(gm: torch.fx.GraphModule, attr: Dict[str, str]) -> Tuple[List[str], bool]:
    """``forward``: one line per submodule call in execution order; a chain of single-use values
    reuses ``x``, a value read later or twice gets its layer's name. Returns (lines, many outputs)."""
    nodes = list(gm.graph.nodes)
    names = _Names(["self"])
    placeholders = [n for n in nodes if n.op == "placeholder"]
    variable: Dict[torch.fx.Node, str] = {n: names.take(str(n.target)) for n in placeholders}
    chain = names.take("x")
    output = nodes[-1].args[0]
    results = list(output) if isinstance(output, (tuple, list)) else [output]
    calls = [n for n in nodes if n.op == "call_module"]
    body: List[str] = []
    for i, node in enumerate(calls):
        users = list(node.users)
        feeds_next = i + 1 < len(calls) and users == [calls[i + 1]] and node not in results
        last = i + 1 == len(calls) and results == [node] and len(users) == 1
        variable[node] = chain if feeds_next or last else names.take(attr[str(node.target)])
        inputs = [variable[a] for a in _node_inputs(node.args)]
        head = f"{variable[node]} = self.{attr[str(node.target)]}("
        if isinstance(node.args[0], (list, tuple)):
            body.extend(_wrapped(head + "[", inputs, "])", 8))
        else:
            body.extend(_wrapped(head, inputs, ")", 8))
    returned = [variable[n] for n in results]
    many = len(returned) > 1
    body.extend(_wrapped("return (", returned, ")", 8) if many else [f"        return {returned[0]}"])
    annotation = "Tuple[Tensor, ...]" if many else "Tensor"
    arguments = [f"{variable[n]}: Tensor" for n in placeholders]
    head = _wrapped("    def forward(self, ", arguments, f") -> {annotation}:", 0)
    return head + body, many


def _write_class(
    gm: torch.fx.GraphModule, name: str, doc: str, classes: _Names, out: List[_Class]
) -> None:
    """Append the class of converted model ``gm`` to ``out``, after those of its nested models."""
    attributes = _Names(["self", "training"])
    attr = {child: attributes.take(child) for child, _ in gm.named_children()}
    init, imports = _init_lines(gm, attr, classes, out)
    forward, many = _forward_lines(gm, attr)
    if many:
        imports.add("from typing import Tuple")
    lines = [f"class {name}(nn.Module):", f'    """{doc}"""', ""] + init + [""] + forward
    out.append(_Class(lines, imports))


def _import_block(imports: Set[str]) -> List[str]:
    """Import lines in three groups (standard library, torch, torchblocks), ``from`` lines merged."""
    merged: Dict[str, Set[str]] = {}
    statements: List[str] = []
    for line in imports:
        match = re.fullmatch(r"from (\S+) import (.+)", line)
        if match:
            merged.setdefault(match.group(1), set()).update(n.strip() for n in match.group(2).split(","))
        else:
            statements.append(line)
    statements += [f"from {module} import {', '.join(sorted(n))}" for module, n in merged.items()]
    groups: List[List[str]] = [[], [], []]
    for line in statements:
        package = line.split()[1].split(".")[0]
        groups[0 if package in ("os", "typing") else 1 if package == "torch" else 2].append(line)
    block: List[str] = []
    for group in groups:
        if group:
            block += sorted(group, key=lambda line: (line.startswith("from"), line)) + [""]
    return block


def _shape_text(shape: Sequence[Optional[int]], channels_first: bool) -> str:
    dims = list(shape)
    if len(dims) == 4 and not channels_first:
        dims = [dims[0], dims[3], dims[1], dims[2]]
    shown = ["N" if i == 0 else "?" if d is None else str(d) for i, d in enumerate(dims)]
    return "(" + ", ".join(shown) + ")"


def _source(keras_model: Any, gm: torch.fx.GraphModule, channels_first: bool) -> Tuple[str, str]:
    """The text of the module file and the name of the model class."""
    classes = _Names(_MODULE_NAMES)
    name = classes.take(keras_model.name, camel=True)
    ins = ", ".join(_shape_text(t.shape, channels_first) for t in keras_model.inputs)
    outs = ", ".join(_shape_text(t.shape, channels_first) for t in keras_model.outputs)
    out: List[_Class] = []
    _write_class(gm, name, f"Keras model {keras_model.name!r}: {ins} -> {outs}.", classes, out)
    imports = {"import os", "import torch", "from torch import Tensor, nn", "from typing import Optional"}
    for written in out:
        imports |= written.imports
    layout = "" if channels_first else " Images are (N, C, H, W) where Keras took (N, H, W, C)."
    lines = [
        f'"""The Keras model {keras_model.name!r} in PyTorch, written by torchblocks (to_source).',
        "",
        f"``build()`` returns ``{name}`` in eval mode with the state dict of the .pt file beside",
        f"this one.{layout}",
        '"""',
    ] + _import_block(imports) + [""]
    for written in out:
        lines += written.lines + ["", ""]
    lines += [
        f"def build(weights: Optional[str] = None) -> {name}:",
        f'    """``{name}`` in eval mode, with the state dict saved at ``weights`` (default: the .pt',
        '    file beside this one)."""',
        f"    model = {name}()",
        '    path = weights if weights is not None else os.path.splitext(__file__)[0] + ".pt"',
        "    model.load_state_dict(torch.load(path, weights_only=True))",
        "    return model.eval()",
    ]
    return "\n".join(lines) + "\n", name


def _state_dict(text: str, path: str, name: str, gm: torch.fx.GraphModule) -> Dict[str, torch.Tensor]:
    """Run the written code and check its model against ``gm``, submodule by submodule; return
    ``gm``'s state dict under the written model's keys (the same structure, in the same order)."""
    namespace: Dict[str, Any] = {"__name__": "torchblocks_to_source_check", "__file__": path}
    exec(compile(text, path, "exec"), namespace)  # the code written just now, from our own writers
    written = namespace[name]()
    for (key, expected), (_, actual) in zip(gm.named_modules(), written.named_modules()):
        if isinstance(expected, torch.fx.GraphModule):
            continue
        if type(actual) is not type(expected) or repr(actual) != repr(expected):
            raise NotImplementedError(
                f"to_source: the code written for submodule {key!r} builds {actual!r}, not the "
                f"converted {expected!r}; the writer of {type(expected).__name__} is incomplete."
            )
    state, converted = written.state_dict(), gm.state_dict()
    same_shapes = [v.shape for v in state.values()] == [v.shape for v in converted.values()]
    trainable = [p.requires_grad for p in written.parameters()]
    if not same_shapes or trainable != [p.requires_grad for p in gm.parameters()]:
        raise NotImplementedError(
            f"to_source: the written model's state dict or trainable parameters differ from the "
            f"converted model's ({len(state)} vs {len(converted)} tensors)."
        )
    return {k: v.detach().clone().contiguous() for k, v in zip(state, converted.values())}


def _temporary_beside(target: str, write: Callable[[str], None]) -> str:
    """``write`` a temporary file beside ``target`` (mode as a new file gets); returns its path."""
    folder, base = os.path.split(os.path.abspath(target))
    fd, temporary = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(temporary)
        umask = os.umask(0)  # mkstemp makes the file private; read the umask to undo that
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
    except BaseException:
        os.unlink(temporary)
        raise
    return temporary


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def to_source(keras_model: Any, path: str) -> SourceFiles:
    """Write a Keras model as a readable PyTorch module (``path``, a .py file) and its state dict
    (the .pt file beside it). Keras: no equivalent.

    The module file holds one ``nn.Module`` class named after the Keras model (one more per
    nested Keras model): ``__init__`` builds one submodule per Keras layer, each with a comment
    naming the layer and its class; ``forward`` calls them one line per layer call in Keras'
    execution order, on (N, C, H, W) images and (N, F) vectors. ``build(weights=None)`` returns
    the model in eval mode with the state dict loaded (``torch.load(..., weights_only=True)``).
    The file imports only torch and torchblocks (and os, typing); its lines fit in 100 columns.

    Both files are written to temporary files and renamed into place, the .pt first; nothing is
    left behind on failure. The code is checked against ``from_keras(keras_model)`` submodule by
    submodule before writing; ``verify`` (as ``torchblocks port`` runs it) checks the outputs.

    Raises:
        TypeError / ValueError: a non-Keras model, a path that is not a writable .py file, a layer
            ``from_keras`` does not convert.
        NotImplementedError: a converted module class without a source writer (``writers.WRITERS``).
    """
    keras = import_keras()
    path = writable_path(path)
    if not path.endswith(".py"):
        raise ValueError(f"Invalid value for argument `path`. Expected a .py file. Received path={path!r}.")
    gm = from_keras(keras_model)
    weights_path = path[: -len(".py")] + ".pt"
    text, name = _source(keras_model, gm, is_channels_first(keras, keras_model))
    state = _state_dict(text, path, name, gm)
    weights_temporary: Optional[str] = _temporary_beside(weights_path, lambda p: torch.save(state, p))
    module_temporary: Optional[str] = None
    try:
        module_temporary = _temporary_beside(path, lambda p: _write_text(p, text))
        os.replace(weights_temporary, weights_path)
        weights_temporary = None
        os.replace(module_temporary, path)
    except BaseException:
        for leftover in (weights_temporary, module_temporary):
            if leftover is not None and os.path.exists(leftover):
                os.unlink(leftover)
        if weights_temporary is None:  # the new .pt is in place without its .py
            os.unlink(weights_path)
        raise
    return SourceFiles(path, weights_path, name)

"""The package's import layering (docs/architecture.md): each module imports only from its own
layer or the layers above it, and no two modules import each other."""
import ast
import pathlib
import re
from typing import Dict, Iterator, Set

import pytest

import torchblocks as tb

PACKAGE = pathlib.Path(tb.__file__).parent
DOC = PACKAGE.parent / "docs" / "architecture.md"

# The layers of docs/architecture.md, top first; a name is a module or a subpackage of torchblocks.
LAYERS = [
    {"_checks", "padding", "activations"},
    {"conv", "norm", "pooling", "linear", "residual", "optim"},
    {"models"},
    {"_fx"},
    {"fusion", "_onednn", "_packing", "inference"},
    {"export"},
    {"analysis"},
    {"ecosystem"},
    {"interop"},
    {"train"},
    {"bench"},
    {"cli"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}
FACADES = {"__init__", "__main__"}  # the public namespace and `python -m torchblocks` import everything


def modules() -> Iterator[pathlib.Path]:
    yield from sorted(p for p in PACKAGE.rglob("*.py") if not (p.parent == PACKAGE and p.stem in FACADES))


def dotted(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path) -> Set[str]:
    """Every torchblocks module ``path`` imports, at module level or inside a function."""
    here = dotted(path).split(".")
    package = here if path.stem == "__init__" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "torchblocks")
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if target.split(".")[0] != "torchblocks":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                is_module = (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists() or (
                    PACKAGE.parent / sub.replace(".", "/")
                ).is_dir()
                found.add(sub if is_module else target)
    found.discard(dotted(path))
    return found


def layer_name(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "torchblocks"


GRAPH: Dict[str, Set[str]] = {dotted(p): imports(p) for p in modules()}


def test_every_module_has_a_layer():
    assert {layer_name(m) for m in GRAPH} - set(LAYER_OF) == set()


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_only_from_its_layer_or_above(module):
    mine = LAYER_OF[layer_name(module)]
    below = sorted(
        t for t in GRAPH[module] if layer_name(t) != "torchblocks" and LAYER_OF[layer_name(t)] > mine
    )
    assert below == [], f"{module} imports from a later layer"


def test_no_two_modules_import_each_other():
    mutual = sorted((a, b) for a in GRAPH for b in GRAPH[a] if a < b and a in GRAPH.get(b, set()))
    assert mutual == []


def test_the_document_shows_every_layer_in_order():
    block = DOC.read_text().split("```")[1]
    listed = [re.split(r"[./]", word)[0] for line in block.splitlines() for word in line[:46].split()]
    order = [LAYER_OF[name] for name in listed if name in LAYER_OF]
    assert order == sorted(order)
    assert set(listed) >= set(LAYER_OF) - {"_packing"}

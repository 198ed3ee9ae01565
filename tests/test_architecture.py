"""The package's shape, checked: the layers of the import graph, no cycle, and small modules.

The sub-packages are layers, lowest first; a module may import its own layer and the layers below
it, never one above (a lazy import inside a function counts too). The README's Development section
maps each sub-package to its role.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import REPO

PACKAGE = REPO / "lmcollapse"

# Lowest first. A module belongs to the layer of the longest prefix that names it.
LAYERS: list[tuple[str, ...]] = [
    ("lmcollapse", "lmcollapse.errors"),  # the package's root and its one exception type
    ("lmcollapse.run",),  # bookkeeping every layer uses: layout, lock, manifests, atomic writes, ...
    ("lmcollapse.config",),  # the typed config, its presets and named corpora, the shipped pipelines
    ("lmcollapse.data",),  # locating, reading and tokenizing corpora; records; the regimes
    ("lmcollapse.engine",),  # models, the training loop and its checkpointer, sampling
    ("lmcollapse.metrics", "lmcollapse.evaluate_modules"),  # definitions and computations of every metric
    ("lmcollapse.stages",),  # the resumable stages of a run and the pipeline that calls them
    ("lmcollapse.views",),  # read-only views: the plan, its cost, the status
    ("lmcollapse.report", "lmcollapse.theory"),  # tables, figures, cards' readers, export; the closed forms
    ("lmcollapse.studies",),  # grids of runs, their launchers and statistics
    ("lmcollapse.cli", "lmcollapse.__main__"),  # the command line
]

MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_TOP_LEVEL_MODULES = 400, 80, 10


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    best, found = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    assert found is not None, f"{module} belongs to no layer: add its sub-package to LAYERS"
    return found


def imports_of(module: str) -> set[str]:
    """The lmcollapse modules ``module`` imports, at the top or inside a function."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in MODULES and name != module)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_import_goes_to_the_same_layer_or_below():
    upward = [f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
              for module, targets in GRAPH.items() for target in targets
              if layer_of(target) > layer_of(module) and not module.startswith(target + ".")]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    # A package's __init__ re-exporting its own modules is not a cycle of the architecture.
    def edges(module):
        return {t for t in GRAPH[module] if not module.startswith(t + ".") and not t.startswith(module + ".")}

    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in edges(module):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target] if target in path else [module, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in MODULES:
        if module not in state:
            visit(module, [module])


def test_modules_and_functions_are_small():
    too_long = []
    for module, path in MODULES.items():
        source = path.read_text(encoding="utf-8")
        lines = source.count("\n") + 1
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{module}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{module}.{node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)


def test_the_top_level_holds_few_modules_beside_the_sub_packages():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top

"""The import graph of ``src/cl_suite`` follows the layering of ARCHITECTURE.md: no module imports a
package of a higher layer, and neither the packages nor the modules import each other in a circle.

Every import statement counts, wherever it is (module top, function body, ``if TYPE_CHECKING``): a
function-level import hides a dependency from the import system, not from the design.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT_PACKAGE = "cl_suite"

# Bottom to top. A module may import its own layer and the layers below it, never one above.
# Top-level modules (cl_suite/<name>.py) are packages of their own here.
LAYERS: list[tuple[str, ...]] = [
    ("cl_suite", "conf", "errors", "paths", "distributed", "resolvers", "sweeps", "files"),  # base
    ("objectives",),  # the equations: pure functions of tensors
    ("data", "models", "samplers"),
    ("losses",),
    ("methods",),
    ("eval",),
    ("engine",),
    ("export", "report"),
    ("run_evaluation",),
    ("cli",),
    ("api",),  # uses cli's override checks
    ("train", "evaluate"),
]
LAYER_OF = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}


def module_names() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (``pkg/__init__.py`` is ``pkg``)."""
    names = {}
    for path in sorted((SRC / ROOT_PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


MODULES = module_names()


def package_of(module: str) -> str:
    """``cl_suite.engine.trainer`` -> ``engine``; ``cl_suite.losses`` -> ``losses``; ``cl_suite`` -> ``cl_suite``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports_of(module: str, source: str) -> list[tuple[str, int]]:
    """(imported cl_suite module, line) of every import statement in ``source``, at any depth.

    ``from a.b import c`` imports module ``a.b.c`` when that is a module, else (a name of) ``a.b``.
    """
    is_package = MODULES.get(module, Path()).name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            if target == ROOT_PACKAGE or target.startswith(ROOT_PACKAGE + "."):
                while target not in MODULES and "." in target:  # `import cl_suite.x.y` of a name: its module
                    target = target.rsplit(".", 1)[0]
                found.append((target, node.lineno))
    return found


def module_edges() -> list[tuple[str, str, int]]:
    """(importer, imported, line) over the whole package, self-imports left out."""
    edges = set()
    for module, path in MODULES.items():
        for target, line in imports_of(module, path.read_text(encoding="utf-8")):
            if target != module:
                edges.add((module, target, line))
    return sorted(edges, key=lambda edge: (edge[0], edge[2], edge[1]))


EDGES = module_edges()


def where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(SRC.parent)}:{line}"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def cycle_report(key, members: list[str]) -> list[str]:
    """The import statements that run between members of one cycle (``key`` maps a module to its node)."""
    inside = set(members)
    return [f"  {where(src, line)}: {src} -> {dst}" for src, dst, line in EDGES
            if key(src) in inside and key(dst) in inside and key(src) != key(dst)]


def test_the_collector_sees_every_import_statement():
    source = ("import os\nimport cl_suite.paths\nfrom cl_suite.engine import checkpoint as ckpt\n"
              "def f():\n    from cl_suite.engine.trainer import train\n"
              "class C:\n    def g(self):\n        if True:\n            from cl_suite import models, errors\n"
              "from cl_suite.losses import ContrastiveLoss\n")
    assert imports_of("cl_suite.eval.knn", source) == [
        ("cl_suite.paths", 2), ("cl_suite.engine.checkpoint", 3), ("cl_suite.losses", 10),
        ("cl_suite.engine.trainer", 5), ("cl_suite.models", 9), ("cl_suite.errors", 9)]
    assert imports_of("cl_suite.methods.moco", "from .base import MethodOutput\nfrom .. import losses\n") == [
        ("cl_suite.methods.base", 1), ("cl_suite.losses", 2)]


def test_every_package_has_a_layer():
    missing = sorted({package_of(module) for module in MODULES} - set(LAYER_OF))
    assert not missing, f"packages without a layer in LAYERS (add them where their imports put them): {missing}"


def test_no_module_imports_a_higher_layer():
    upward = [f"  {where(src, line)}: {src} ({package_of(src)}, layer {LAYER_OF[package_of(src)]}) -> {dst} "
              f"({package_of(dst)}, layer {LAYER_OF[package_of(dst)]})"
              for src, dst, line in EDGES if LAYER_OF[package_of(dst)] > LAYER_OF[package_of(src)]]
    assert not upward, "imports of a higher layer (see ARCHITECTURE.md):\n" + "\n".join(upward)


def test_no_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for src, dst, _ in EDGES:
        if package_of(src) != package_of(dst):
            graph.setdefault(package_of(src), set()).add(package_of(dst))
    found = cycles(graph)
    report = [f"packages {' <-> '.join(members)}:\n" + "\n".join(cycle_report(package_of, members))
              for members in found]
    assert not found, "packages that import each other in a circle:\n" + "\n".join(report)


def test_no_cycle_between_modules():
    """Within every package, engine's included; a package's ``__init__`` importing its modules is fine
    as long as none of them imports the package back."""
    graph: dict[str, set[str]] = {}
    for src, dst, _ in EDGES:
        graph.setdefault(src, set()).add(dst)
    found = cycles(graph)
    report = [f"modules {' <-> '.join(members)}:\n" + "\n".join(cycle_report(lambda m: m, members))
              for members in found]
    assert not found, "modules that import each other in a circle:\n" + "\n".join(report)

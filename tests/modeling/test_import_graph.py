"""The package's import graph, read from the source: no circle anywhere in ``spikegpt`` (imports inside functions
and type-only imports count), and a model package that imports only torch, transformers, the standard library and
its own files, so that checkpoints can carry it (``spikegpt.kernels`` optional, inside a ``try``)."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELING = "spikegpt.modeling"
# transformers' configurations use huggingface_hub's strict dataclasses; it comes with transformers
MODELING_MAY_IMPORT = {"torch", "transformers", "huggingface_hub"} | set(sys.stdlib_module_names)


def package_modules() -> dict[str, Path]:
    """Every module of the installed package by its dotted name, from the folders pyproject.toml maps."""
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    modules = {}
    for package, folder in folders.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "assets" in path.relative_to(ROOT / folder).parts:  # bundled checkpoints' copies of the model code
                continue
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            modules.setdefault(name, path)  # "spikegpt" maps spikegpt/ itself; the other folders are their own
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, ast.AST, bool]]:
    """(imported module, the import statement, whether it is inside a ``try``) for every import anywhere in the
    file; ``from x import y`` imports module ``x.y`` where that is a module, else ``x``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    in_try = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for s in t.body for n in ast.walk(s)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node, id(node) in in_try) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                found.append((target, node, id(node) in in_try))
    return found


def package_edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _, _ in imports_of(name, path, modules):
            while target and target not in modules:  # an attribute of a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                edges[name].add(target)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_graph_reader_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_the_package():
    modules = package_modules()
    assert {"spikegpt.modeling.model", "spikegpt.runtime.step", "spikegpt.kernels.dispatch"} <= set(modules)
    assert circles(package_edges(modules)) == []


def test_the_model_imports_only_torch_transformers_and_its_own_files():
    modules = package_modules()
    for name, path in modules.items():
        if not name.startswith(MODELING):
            continue
        for target, node, guarded in imports_of(name, path, modules):
            where = f"{path.relative_to(ROOT)}:{node.lineno} imports {target}"
            if isinstance(node, ast.ImportFrom) and node.level:
                # transformers' loader copies only "from .module import ..." siblings into a checkpoint
                assert node.level == 1 and node.module and "." not in node.module, where
            elif target == "spikegpt.kernels" or target.startswith("spikegpt.kernels."):
                assert guarded, where + " outside a try (the kernels are optional)"
            else:
                assert target.split(".")[0] in MODELING_MAY_IMPORT, where

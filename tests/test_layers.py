"""The layers point one way, checked statically: every module of the vargen package is parsed, relative imports are
resolved, and imports inside functions count (they run, only later). A unit is a subpackage or module of vargen
(``models``, ``pipeline``); imports made by name at run time (``importlib.import_module`` in registries) are not
edges."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import vargen

ROOT = Path(vargen.__file__).resolve().parent

# packages whose graph has no cycle (an edge: any module of A imports any module of B)
PACKAGES = ("decode", "kernels", "models", "tokenizers", "samplers", "train", "eval")

FORBIDDEN = {  # importer: what it must not import
    "models": ("samplers", "train", "eval", "testing"),
    "kernels": ("samplers", "models"),
    "decode": ("models", "samplers", "kernels"),
    "pipeline": ("train",),
    "samplers": ("train",),
    "tokenizers": ("samplers",),
}

LEAVES = ("config", "distributions")  # import nothing from vargen: models, kernels and samplers all use them


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("vargen", *path.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


class _Imports(ast.NodeVisitor):
    """``(target module, line, at module level)`` of every import of one module."""

    def __init__(self, name: str, is_package: bool):
        self.package = name if is_package else name.rpartition(".")[0]
        self.found: list[tuple[str, int, bool]] = []
        self.depth = 0

    def _function(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_Import(self, node):
        self.found += [(alias.name, node.lineno, self.depth == 0) for alias in node.names]

    def visit_ImportFrom(self, node):
        if node.level:
            parts = self.package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1])
            module = f"{base}.{node.module}" if node.module else base
        else:
            module = node.module
        self.found.append((module, node.lineno, self.depth == 0))
        for alias in node.names:  # `from . import x`: x may be a module
            if f"{module}.{alias.name}" in MODULES:
                self.found.append((f"{module}.{alias.name}", node.lineno, self.depth == 0))


def _imports() -> dict[str, list[tuple[str, int, bool]]]:
    out = {}
    for name, path in MODULES.items():
        visitor = _Imports(name, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(), str(path)))
        out[name] = visitor.found
    return out


IMPORTS = _imports()


def _unit(module: str) -> str | None:
    """``vargen.<unit>`` a module belongs to (``models`` for ``vargen.models.hf.janus``), None outside vargen."""
    parts = module.split(".")
    if parts[0] != "vargen":
        return None
    return parts[1] if len(parts) > 1 else ""


def _edges() -> dict[tuple[str, str], list[str]]:
    """Between units: ``(A, B) -> ["module:line -> target", ...]``."""
    out = defaultdict(list)
    for name, found in IMPORTS.items():
        for target, line, _ in found:
            a, b = _unit(name), _unit(target)
            if b is not None and a != b:
                out[a, b].append(f"{name}:{line} -> {target}")
    return out


EDGES = _edges()


def _cycle(nodes) -> list[str] | None:
    """A cycle of the unit graph restricted to ``nodes`` (as a closed path), or None."""
    succ = {a: sorted(b for (x, b) in EDGES if x == a and b in nodes) for a in nodes}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(a):
        state[a] = 1
        path.append(a)
        for b in succ[a]:
            if state.get(b) == 1:
                return path[path.index(b):] + [b]
            if b not in state and (found := visit(b)):
                return found
        state[a] = 2
        path.pop()
        return None

    for a in nodes:
        if a not in state and (found := visit(a)):
            return found
    return None


def test_the_walk_sees_relative_imports_inside_functions():
    found = {target for target, _, top in IMPORTS["vargen.samplers.next_scale"] if not top}
    assert "vargen.models.var_kv" in found and "vargen.samplers.compiled" in found
    assert any(t == "vargen.kernels.logits" for t, _, _ in IMPORTS["vargen.kernels"])


def test_no_cycle_between_the_packages():
    cycle = _cycle(PACKAGES)
    evidence = [] if cycle is None else [e for a, b in zip(cycle, cycle[1:]) for e in EDGES[a, b][:3]]
    assert cycle is None, f"import cycle {' -> '.join(cycle)}:\n" + "\n".join(evidence)


def test_no_forbidden_direction():
    bad = [e for a, targets in FORBIDDEN.items() for b in targets for e in EDGES.get((a, b), [])]
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_the_leaf_modules_import_nothing_from_vargen():
    bad = [f"vargen.{leaf}:{line} -> {target}" for leaf in LEAVES
           for target, line, _ in IMPORTS[f"vargen.{leaf}"] if _unit(target) is not None]
    assert not bad, "\n".join(bad)


def _loaded_with(module: str) -> dict[str, str]:
    """Every module importing ``module`` executes (parent packages and module-level imports, transitively),
    mapped to the import that brought it in."""
    seen: dict[str, str] = {}
    todo = [(module, "")]
    while todo:
        name, why = todo.pop()
        chain = [".".join(name.split(".")[: i + 1]) for i in range(name.count(".") + 1)]
        for m in chain:
            if m in seen:
                continue
            seen[m] = why
            todo += [(target, f"{m}:{line}") for target, line, top in IMPORTS.get(m, []) if top]
    return seen


def test_the_cli_imports_no_gradio_and_not_the_app_at_module_level():
    loaded = _loaded_with("vargen.cli")
    bad = {m: why for m, why in loaded.items() if m.split(".")[0] == "gradio" or _unit(m) == "app"}
    assert not bad, "\n".join(f"{m} (imported at {why})" for m, why in bad.items())

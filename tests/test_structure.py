"""The layout's invariants, read from the code (nothing is run): no import cycle in seg/ (lazy imports included),
one place that reads checkpoint files, one place that tests head names, small files, no re-export-only modules.

``python -m pytest tests/test_structure.py -q -s`` also prints which package imports which."""

from __future__ import annotations

import ast
import graphlib
from collections import defaultdict
from pathlib import Path

import pytest
from helpers import ROOT

SEG = ROOT / "seg"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of seg (a package is its ``__init__``)."""
    out = {}
    for path in SEG.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The seg module an imported dotted name refers to: the longest prefix that is a module."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The seg modules ``module`` imports, at any depth of its code (function-level, lazy imports included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]  # a submodule, or a name in ``base``
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target != module:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_cycle_in_seg():
    graph = _graph()
    assert {"seg.models.registry", "seg.loading", "seg.evaluation", "seg.compare.runs"} <= set(graph)
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle in seg/: {' -> '.join(e.args[1])}")
    packages: dict[str, set[str]] = defaultdict(set)  # the package view, printed for the design notes
    for name, targets in graph.items():
        top = name.split(".")[1] if "." in name else "seg"
        packages[top] |= {t.split(".")[1] if "." in t else "seg" for t in targets} - {top}
    print(
        "\nseg package imports:", *(f"  {k} -> {', '.join(sorted(v))}" for k, v in sorted(packages.items())), sep="\n"
    )


def _calls(tree: ast.AST, attr: str) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == attr
    ]


def test_checkpoint_files_are_read_in_one_place():
    """Exactly one function calls ``torch.load``: ``seg.models.safe_load.read_checkpoint`` (never runs code)."""
    sites = []
    for path in SEG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
            for call in _calls(fn, "load"):
                if isinstance(call.func.value, ast.Name) and call.func.value.id == "torch":
                    sites.append((path.relative_to(ROOT).as_posix(), fn.name))
    assert set(sites) == {("seg/models/safe_load.py", "read_checkpoint")}, sites


def test_head_names_are_tested_by_the_registry_only():
    """No module but the registry and the smp adapter compares a head name with an ``smp:`` literal."""
    offenders = []
    for path in SEG.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ("seg/models/registry.py", "seg/models/smp.py"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            literals = []
            if isinstance(node, ast.Compare):
                literals = [n for n in [node.left, *node.comparators] if isinstance(n, ast.Constant)]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "startswith":
                literals = [n for n in node.args if isinstance(n, ast.Constant)]
            if any(isinstance(n.value, str) and "smp:" in n.value for n in literals):
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, offenders


def test_files_stay_small():
    big = {
        p.relative_to(ROOT).as_posix(): n
        for p in SEG.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not big, f"split these by concern: {big}"


def test_no_module_only_re_exports():
    """A moved function is imported from its new home: no module of seg/ (packages aside) is only imports."""
    shims = []
    for path in SEG.rglob("*.py"):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        body = ast.parse(path.read_text()).body
        rest = [
            n
            for n in body
            if not isinstance(n, (ast.Import, ast.ImportFrom))
            and not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))  # the docstring
            and not (isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in n.targets))
        ]
        if body and not rest:
            shims.append(path.relative_to(ROOT).as_posix())
    assert not shims, shims

"""The package's shape: modules of readable size, no import circles, names imported from where they live.

Static checks over the source (``ast``), so they run in milliseconds and name the
offending file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "recsys_retrain"
MAX_LINES = 500
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


NAMES = {module_name(p): p for p in MODULES}


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """Every ``recsys_retrain`` import in ``path``, at any depth: (module, imported names, line)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "recsys_retrain":
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "recsys_retrain"]
    return found


def targets(module: str, names: list[str]) -> set[str]:
    """The modules an import statement loads: ``from pkg import mod`` loads ``pkg.mod``."""
    out = {module} if module in NAMES else set()
    out |= {f"{module}.{n}" for n in names if f"{module}.{n}" in NAMES}
    return out


def graph() -> dict[str, set[str]]:
    return {
        name: {t for module, names, _ in imports(path) for t in targets(module, names)} - {name}
        for name, path in NAMES.items()
    }


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_exceeds_500_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it by responsibility"


def test_there_is_no_import_circle():
    edges = graph()
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        seen[node] = 1
        for nxt in sorted(edges[node]):
            if seen.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in seen and (circle := visit(nxt, path + [nxt])):
                return circle
        seen[node] = 2
        return None

    for start in sorted(edges):
        if start not in seen and (circle := visit(start, [start])):
            pytest.fail("import circle: " + " -> ".join(circle))


def test_no_private_name_is_imported_across_modules():
    private = [
        f"{path.relative_to(ROOT)}:{line} imports {name} from {module}"
        for path in [*MODULES, *ROOT.glob("dags/**/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("infra/*.py")]
        for module, names, line in imports(path)
        for name in names
        if name.startswith("_")
    ]
    assert not private


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("__init__.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_package_init_files_re_export_nothing(path):
    body = ast.parse(path.read_text()).body
    assert not [node.lineno for node in body if isinstance(node, (ast.Import, ast.ImportFrom))]


def test_the_environment_is_read_only_through_settings():
    """Outside ``settings.py`` no module reads the environment at import time (top-level statements)."""
    readers = []
    for path in MODULES:
        if path.name == "settings.py":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):  # a docstring
                continue
            if "environ" in ast.unparse(node) or "getenv" in ast.unparse(node):
                readers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not readers

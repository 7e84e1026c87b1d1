"""The package's layout rules (README, Architecture), checked on the source as it is."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "harness"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import in a module, lazy ones included."""
    path = MODULES[name]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule, []) if submodule in MODULES else (base, [alias.name]))
    return [(module, names) for module, names in found if module == "harness" or module.startswith("harness.")]


def test_modules_are_found() -> None:
    assert {"harness.cli", "harness.run.protocol", "harness.spec.variant", "harness.measure.host"} <= set(MODULES)


def test_no_import_cycles() -> None:
    graph = {name: {module for module, _ in imports(name) if module in MODULES and module != name}
             for name in MODULES}
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                cycles.append(trail[trail.index(child):] + [child])
            elif child not in state:
                visit(child, trail + [child])
        state[node] = "done"

    for name in MODULES:
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_production_code_never_imports_the_emulators() -> None:
    allowed = {"harness.cli"}
    offenders = {name: module for name in MODULES if not name.startswith("harness.emulators") and name not in allowed
                 for module, _ in imports(name) if module.startswith("harness.emulators")}
    assert offenders == {}


def test_no_private_name_is_used_across_modules() -> None:
    used = []
    for name in MODULES:
        for module, names in imports(name):
            used += [f"{name} takes {module}.{n}" for n in names
                     if n.startswith("_") and not n.startswith("__") and module != name]
        tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
        aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                   for a in n.names if (getattr(n, "module", None) or a.name).startswith("harness")}
        used += [f"{name} reads {node.value.id}.{node.attr}" for node in ast.walk(tree)
                 if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                 and node.value.id in aliases and node.attr.startswith("_") and not node.attr.startswith("__")]
    assert used == []

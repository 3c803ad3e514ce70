"""plexa's plugins use only its public API (plexa.PUBLIC_MODULES, no private names): a third
party's plugin written like them keeps working when plexa's internals move."""

from __future__ import annotations

import ast
from pathlib import Path

import plexa

from .conftest import REPO


def _plexa_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) for every import of a plexa module in a file, nested ones too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "plexa":
                found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "plexa":
                    found.append((node.lineno, alias.name, []))
    return found


def test_plugins_import_only_the_public_api() -> None:
    files = sorted((REPO / "plugins").rglob("*.py"))
    assert len(files) > 10
    problems = []
    for path in files:
        for line, module, names in _plexa_imports(path):
            where = f"{path.relative_to(REPO)}:{line}"
            if module not in plexa.PUBLIC_MODULES:
                problems.append(f"{where}: {module} is not public")
            problems += [f"{where}: {module}.{n} is private" for n in names if n.startswith("_")]
    assert not problems, "\n".join(problems)


def test_the_check_sees_a_private_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from plexa.runners.local import _leave_process_group\n")
    assert _plexa_imports(bad) == [(2, "plexa.runners.local", ["_leave_process_group"])]

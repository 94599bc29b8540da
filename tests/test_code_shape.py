"""A function longer than 60 lines says why, in a comment right above it (docs/reference/layout.md)."""

from __future__ import annotations

import ast

from helpers.paths import REPO_ROOT

LIMIT = 60
REASON = "# Over 60 lines:"


def long_functions_without_a_reason(source: str, name: str) -> list[str]:
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > LIMIT:
            first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            above = [line.strip() for line in lines[max(0, first - 4) : first - 1]]
            if not any(line.startswith(REASON) for line in above):
                found.append(f"{name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    return found


def test_every_long_function_says_why():
    found = []
    for path in sorted((REPO_ROOT / "clipctl").rglob("*.py")):
        found += long_functions_without_a_reason(path.read_text(), str(path.relative_to(REPO_ROOT)))
    assert found == []


def test_a_long_function_without_a_reason_is_caught():
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    assert long_functions_without_a_reason(f"def f():\n{body}\n", "planted.py") == ["planted.py:1 f (61 lines)"]
    assert long_functions_without_a_reason(f"{REASON} a planted table\ndef f():\n{body}\n", "planted.py") == []

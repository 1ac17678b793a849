"""Every request body a test writes for a generation bounds it and fixes its seed.

An unbounded generation runs until the end of the context, and on a loaded machine that is
minutes: a browser test once failed after 120 s with its answer still streaming. Unseeded
sampling makes a failure impossible to reproduce. So every literal body (a dict or keyword call)
naming a `model` with `messages` or a `prompt`, in tests/ and e2e/, sets `max_tokens` (or
`max_completion_tokens`) and `seed`, directly or through a module constant it spreads (`**CHAT`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import REPO

TEST_FILES = sorted([*(REPO / "tests").glob("*.py"), *(REPO / "e2e").glob("*.py")])


def literal_keys(node: ast.Dict | ast.Call, constants: dict[str, set[str]]) -> set[str]:
    """The keys a dict literal or a call's keywords set; a spread constant adds its own."""
    if isinstance(node, ast.Dict):
        named = [(key.value if isinstance(key, ast.Constant) else None, value) for key, value in zip(node.keys, node.values)]
    else:
        named = [(keyword.arg, keyword.value) for keyword in node.keywords]
    keys = set()
    for key, value in named:
        if key is not None:
            keys.add(key)
        elif isinstance(value, ast.Name):
            keys |= constants.get(value.id, set())
    return keys


def unbounded_bodies(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    constants: dict[str, set[str]] = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Dict | ast.Call):
            for target in statement.targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = literal_keys(statement.value, constants)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Dict | ast.Call):
            continue
        keys = literal_keys(node, constants)
        if "model" in keys and keys & {"messages", "prompt"}:
            missing = [name for name in ("max_tokens", "seed") if name not in keys]
            if "max_completion_tokens" in keys and "max_tokens" in missing:
                missing.remove("max_tokens")
            if missing:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} sets no {' and no '.join(missing)}")
    return found


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda path: str(path.relative_to(REPO)))
def test_every_generation_a_test_asks_for_is_bounded_and_seeded(path):
    assert unbounded_bodies(path) == []

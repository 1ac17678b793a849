"""The docs stay true to the code: every route, error code and module is described, links resolve."""

from __future__ import annotations

import re

import pytest

from service.openapi import OPERATIONS
from tests.support import REPO

DOCS = REPO / "docs"


def literal_error_codes() -> set[str]:
    codes = set()
    for path in (REPO / "service").rglob("*.py"):
        codes.update(re.findall(r'code="([a-z_]+)"', path.read_text(encoding="utf-8")))
    return codes


def test_the_api_reference_lists_every_route():
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    for operation in OPERATIONS:
        assert f"`{operation.method} {operation.path}" in text or f"{operation.path}`" in text, (operation.method, operation.path)


@pytest.mark.parametrize("code", sorted(literal_error_codes()))
def test_the_api_reference_explains_every_error_code(code):
    assert f"`{code}`" in (DOCS / "api.md").read_text(encoding="utf-8")


def test_the_architecture_names_every_module():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    modules = [path for package in ("service", "converter") for path in (REPO / package).rglob("*.py")]
    unmentioned = [f"{path.parent.name}/{path.name}" for path in modules if path.name not in ("__init__.py", "__main__.py") and path.stem not in text]
    assert unmentioned == []


@pytest.mark.parametrize("document", ["README.md", *[f"docs/{path.name}" for path in sorted(DOCS.glob("*.md"))]])
def test_relative_links_resolve(document):
    path = REPO / document
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue
        assert (path.parent / target).exists(), f"{document} links to {target}, which does not exist"

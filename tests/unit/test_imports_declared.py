"""Every third-party module the code imports comes from a distribution pyproject.toml
declares: the runtime's from its dependencies, the tools' and the tests' from those or the
dev extra. A package that is only there because another one needs it may leave with it."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
RUNTIME = {
    canonicalize_name(Requirement(line).name) for line in PYPROJECT["project"]["dependencies"]
}
DEV = {
    canonicalize_name(Requirement(line).name)
    for line in PYPROJECT["project"]["optional-dependencies"]["dev"]
}
FIRST_PARTY = {"votes_app", "votes_tools", "tests"}
# package -> the distributions it may import from; flowerconfig.py is read by Flower.
DECLARED = {"votes_app": RUNTIME, "votes_tools": RUNTIME | DEV, "tests": RUNTIME | DEV}


def imported_modules(path: Path) -> set[str]:
    """The top-level names of the absolute imports in a source file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def third_party(package: str) -> dict[str, set[str]]:
    """module -> the files of `package` that import it, for the modules neither of the
    standard library nor of this project."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        for module in imported_modules(path):
            if module not in sys.stdlib_module_names | FIRST_PARTY | {"__future__"}:
                found.setdefault(module, set()).add(str(path.relative_to(ROOT)))
    return found


def test_imports_are_found() -> None:
    # The control: a declared distribution, an undeclared one, the standard library.
    modules = third_party("votes_app")

    assert {"celery", "sqlalchemy", "pydantic_settings"} <= set(modules)
    assert not {"os", "votes_app", "__future__"} & set(modules)


@pytest.mark.parametrize("package", DECLARED)
def test_every_import_comes_from_a_declared_distribution(package: str) -> None:
    providers = packages_distributions()
    undeclared = {
        module: sorted(files)
        for module, files in third_party(package).items()
        if not {canonicalize_name(dist) for dist in providers.get(module, [])} & DECLARED[package]
    }

    assert undeclared == {}, f"declare their distributions in pyproject.toml ({package})"

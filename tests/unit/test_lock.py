"""The lock files against pyproject.toml: each pin of pyproject locked at its version, each
locked file hashed, and every package a locked one needs locked too (`make lock` rewrites them).

Dependencies are read from the installed distributions, which `make install` takes from
requirements-dev.lock: no package index is needed.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
RUNTIME = PYPROJECT["project"]["dependencies"]
DEV = PYPROJECT["project"]["optional-dependencies"]["dev"]
BUILD = PYPROJECT["build-system"]["requires"]
# lock file -> what it locks: the image's runtime (and the build backend), the developer's all.
LOCKS = {
    "requirements.lock": [*RUNTIME, *BUILD],
    "requirements-dev.lock": [*RUNTIME, *DEV, *BUILD],
}
ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)", re.MULTILINE)
FIX = "run `make lock` and commit the lock files"


def locked(lock: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of each entry of `lock`."""
    text = (ROOT / lock).read_text(encoding="utf-8")
    starts = list(ENTRY.finditer(text))
    entries: dict[str, tuple[str, list[str]]] = {}
    for match, following in zip(starts, [*starts[1:], None], strict=True):
        block = text[match.end() : following.start() if following else len(text)]
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
        entries[canonicalize_name(match["name"])] = (match["version"], hashes)
    return entries


def needed(roots: Iterable[str]) -> dict[str, Requirement]:
    """Every distribution `roots` need, directly or not, on this interpreter: name -> one
    requirement naming it (from the installed distributions' metadata)."""
    found: dict[str, Requirement] = {}
    extras: dict[str, set[str]] = {}
    todo = [Requirement(root) for root in roots]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        wanted = set(requirement.extras) - extras.get(name, set())
        if name in found and not wanted:
            continue
        found.setdefault(name, requirement)
        extras.setdefault(name, set()).update(requirement.extras)
        for line in metadata.distribution(name).requires or []:
            dependency = Requirement(line)
            marker = dependency.marker
            if marker is None or any(
                marker.evaluate({"extra": extra}) for extra in {"", *extras[name]}
            ):
                todo.append(dependency)
    return found


@pytest.mark.parametrize(("lock", "roots"), LOCKS.items(), ids=LOCKS)
def test_each_pin_of_pyproject_is_locked_at_its_version(lock: str, roots: list[str]) -> None:
    entries = locked(lock)

    for root in map(Requirement, roots):
        name = canonicalize_name(root.name)
        assert name in entries, f"{root.name} is not in {lock}: {FIX}"
        assert entries[name][0] in root.specifier, f"{lock} has {name} {entries[name][0]}: {FIX}"
        if root in map(Requirement, [*RUNTIME, *DEV]):
            assert str(root.specifier).startswith("=="), f"pyproject.toml: pin {root} exactly"


@pytest.mark.parametrize(("lock", "roots"), LOCKS.items(), ids=LOCKS)
def test_the_lock_holds_what_is_needed_and_nothing_else(lock: str, roots: list[str]) -> None:
    entries = locked(lock)
    dependencies = needed(roots)

    missing = {name: str(req) for name, req in dependencies.items() if name not in entries}
    assert not missing, f"needed, not in {lock}: {missing}: {FIX}"
    assert set(entries) == set(dependencies), f"in {lock}, needed by nothing: {FIX}"
    for name, requirement in dependencies.items():
        assert entries[name][0] in requirement.specifier, f"{lock}: {name} fails {requirement}"


@pytest.mark.parametrize("lock", LOCKS)
def test_every_locked_package_has_its_hashes(lock: str) -> None:
    for name, (_, hashes) in locked(lock).items():
        assert hashes, f"{lock}: {name} has no hash"


def test_both_locks_agree_and_this_environment_is_the_dev_lock() -> None:
    runtime, dev = locked("requirements.lock"), locked("requirements-dev.lock")

    assert {name: runtime[name][0] for name in runtime} == {name: dev[name][0] for name in runtime}
    for name, (version, _) in dev.items():
        assert metadata.version(name) == version, f"{name}: `make install` installs the lock"

"""The production image holds the runtime alone: its install, made here as the Dockerfile
makes it (no Docker engine needed), has votes_app and its migrations, and no tools."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def copied_sources() -> list[tuple[str, str]]:
    """(source glob, destination) of each COPY of the build context in the Dockerfile."""
    found = []
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            found += [(source, words[-1]) for source in words[1:-1]]
    return found


@pytest.fixture(scope="module")
def image_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build context the Dockerfile copies, installed as its `pip install` does (without
    build isolation: with the locked setuptools, here the development install's)."""
    context = tmp_path_factory.mktemp("context")
    for pattern, _ in copied_sources():
        for source in ROOT.glob(pattern):
            target = context / source.name
            if source.is_dir():
                shutil.copytree(
                    source, target, ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]")
                )
            else:
                shutil.copy2(source, target)
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--target", str(site), str(context)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return site


def in_image(site: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Python with the image's install and the pinned dependencies, without this checkout
    (no site hooks: the development install's path finders stay out)."""
    dependencies = sysconfig.get_paths()["purelib"]
    return subprocess.run(
        [sys.executable, "-S", *argv],
        cwd=site.parent,
        env={**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{dependencies}"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_image_installs_the_locked_dependencies_alone() -> None:
    runs = [
        line
        for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
        if "pip install" in line
    ]

    assert ("requirements.lock", "./") in copied_sources()
    assert runs[0].split() == [
        "RUN", "pip", "install", "--require-hashes", "--requirement", "requirements.lock", "\\"
    ]  # fmt: skip
    # The package itself adds nothing: no dependency, no build backend fetched unhashed.
    assert all({"--no-deps", "--no-build-isolation"} <= set(run.split()) for run in runs[1:])


def test_the_build_context_leaves_the_tools_out() -> None:
    sources = {pattern.rstrip("/") for pattern, _ in copied_sources()}
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()

    assert "votes_app" in sources
    assert not any(source.startswith(("votes_tools", "tests", "bench")) for source in sources)
    assert "votes_tools/" in ignored
    assert "--editable" not in (ROOT / "Dockerfile").read_text(encoding="utf-8")


def test_the_image_install_has_the_runtime_and_its_migrations_only(image_site: Path) -> None:
    installed = {path.name for path in image_site.iterdir()}
    versions = list((image_site / "votes_app" / "migrations" / "versions").glob("*.py"))

    assert "votes_app" in installed
    assert "votes_tools" not in installed
    assert versions

    found = in_image(
        image_site,
        "-c",
        "import importlib.util, votes_app.migrations as m;"
        "print(importlib.util.find_spec('votes_tools'));"
        "print(m.__file__)",
    )
    assert found.returncode == 0, found.stderr
    tools_spec, migrations_file = found.stdout.split()
    assert tools_spec == "None"
    assert Path(migrations_file).is_relative_to(image_site)


@pytest.mark.parametrize("tool", ["demo", "bench", "faults"])
def test_the_tools_say_they_are_not_installed_in_the_image(image_site: Path, tool: str) -> None:
    done = in_image(image_site, "-m", "votes_app.cli", tool, "--help")

    assert done.returncode == 1
    assert "not installed here" in done.stderr
    assert f"make {tool}" in done.stderr

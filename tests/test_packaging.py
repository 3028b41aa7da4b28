"""Distributions build, carry what an installed router needs, and keep their versions in lockstep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from event_router.testing import ROOT

pytestmark = pytest.mark.slow


def build_wheel(source: Path, out: Path) -> Path:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = out.glob("*.whl")
    return wheel


def test_core_wheel_validates_without_the_repository(tmp_path: Path) -> None:
    wheel = build_wheel(ROOT, tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    assert "event_router/schemas/transport.messageReceived.json" in names
    assert "event_router/schemas/defs.json" in names
    assert "event_router/testing/example-events.json" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # the extracted package comes first on the path, far from this checkout's schemas/
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", "import event_router.core.validation as v; print(v.builtin_schema_dir())"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(site)
    config = tmp_path / "router.toml"
    config.write_text('[inputs.a]\ntype = "webhook"\nlisten = "127.0.0.1:1"\n')
    listed = subprocess.run(
        [sys.executable, "-m", "event_router", "schemas", "--json", "-c", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 60


@pytest.mark.parametrize("plugin", sorted(p.parent.name for p in (ROOT / "plugins").glob("*/pyproject.toml")))
def test_plugin_wheels_build(plugin: str, tmp_path: Path) -> None:
    wheel = build_wheel(ROOT / "plugins" / plugin, tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    package = tomllib.loads((ROOT / "plugins" / plugin / "pyproject.toml").read_text())["project"]["name"]
    assert any(n.endswith("entry_points.txt") for n in names), f"{package}: no entry points in the wheel"


def test_version_lists_installed_plugins() -> None:
    from event_router.testing import run_cli

    result = run_cli("--version")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert lines[0] == f"event-router {version}"
    from event_router.plugin_loader import load_plugins

    for info in load_plugins().plugins:
        if not info.builtin:
            assert f"  {info.distribution} {info.version}" in lines


def test_versions_in_lockstep() -> None:
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    version = core["version"]
    for extra, requirements in core["optional-dependencies"].items():
        for requirement in requirements:
            if requirement.startswith("event-router-"):
                assert requirement.endswith(f"=={version}"), f"extra {extra}: {requirement}"
    for pyproject in sorted((ROOT / "plugins").glob("*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        assert project["version"] == version, pyproject
        pins = [r for r in project["dependencies"] if r.startswith("enmeshed-event-router")]
        assert pins, f"{pyproject} does not depend on the router"


def test_mypy_checks_the_core_and_every_plugin_package() -> None:
    """`mypy` as scripts/test (CI) runs it: the core, its test kit and each plugins/*/event_router_* package,
    read from their sources here (mypy_path), the _template's included."""
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    packages = sorted(p for p in (ROOT / "plugins").glob("*/event_router_*") if (p / "__init__.py").is_file())
    assert packages, "no plugin package found"
    assert sorted(mypy["packages"]) == sorted(["event_router", *(p.name for p in packages)])
    assert set(mypy["mypy_path"].split(":")) == {"router", *(str(p.parent.relative_to(ROOT)) for p in packages)}
    for package in [ROOT / "router" / "event_router", *packages]:
        assert (package / "py.typed").is_file(), f"{package} has no py.typed: its users' mypy would not read it"

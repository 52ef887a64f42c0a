"""One lock for every install: infra/constraints.txt, read by .ci/setup (a laptop, CI) and the
image's Dockerfile, and matched by what is installed here."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "infra" / "constraints.txt"
SETUP = ROOT / ".ci" / "setup"
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
REFRESH = ROOT / ".ci" / "lock"
# What a torch build brings with it (CPU and CUDA builds differ): left out of the lock.
BUILD_SPECIFIC = re.compile(r"^(nvidia-|cuda-|triton)")
# Installed here but never pinned: the project itself and the installer.
UNPINNED = {"dark-factory", "pip"}
TORCH = re.compile(r"torch==([\w.]+)")


def locked_lines() -> list[tuple[str, str, str]]:
    """The lock's (package, version, marker) lines; a package may have one per Python range."""
    found = []
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement, _, marker = line.partition(";")
            name, version = requirement.strip().split("==")
            found.append((canonicalize_name(name), version, marker.strip()))
    return found


def pins() -> dict[str, str]:
    """The lock's package → version for this interpreter and platform (markers applied)."""
    return {
        name: version
        for name, version, marker in locked_lines()
        if not marker or Marker(marker).evaluate()
    }


def test_what_is_installed_here_is_the_lock() -> None:
    # CI's environment is made by .ci/setup: every version it resolved is the locked one
    locked = pins()
    installed = {
        canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
    }
    extra = sorted(set(installed) - set(locked) - UNPINNED)
    assert not [n for n in extra if not BUILD_SPECIFIC.match(n)], extra
    # torch's local label (2.13.0+cpu, +cu128) names the build, not the version
    differ = {
        name: (version, installed.get(name))
        for name, version in locked.items()
        if installed.get(name) is not None
        and Version(installed[name]).public != Version(version).public
    }
    assert not differ, differ
    missing = sorted(set(locked) - set(installed))
    assert not missing, f"locked but not installed by .ci/setup dev: {missing}"


def test_every_install_reads_the_lock_and_one_torch() -> None:
    setup, dockerfile = SETUP.read_text(), DOCKERFILE.read_text()
    assert "pip install --quiet -c infra/constraints.txt -e" in setup
    assert "COPY pyproject.toml README.md infra/constraints.txt /build/" in dockerfile
    assert "pip install -c /build/constraints.txt /build" in dockerfile
    # the torch that .ci/setup and the image install first is the one the lock pins
    torches = {TORCH.findall(text)[-1] for text in (setup, dockerfile, REFRESH.read_text())}
    assert torches == {pins()["torch"]}, torches
    assert not [name for name, _, _ in locked_lines() if BUILD_SPECIFIC.match(name)]


def test_the_lock_covers_every_dependency_and_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"]]
    for requirements in project["optional-dependencies"].values():
        wanted += requirements
    lines = locked_lines()
    names = {canonicalize_name(Requirement(r).name) for r in wanted} - {"dark-factory"}
    assert names <= {name for name, _, _ in lines}, sorted(names - {n for n, _, _ in lines})
    asked = {canonicalize_name(r.name): r.specifier for r in map(Requirement, wanted)}
    for name, version, _ in lines:  # each pin satisfies what pyproject.toml asks of it
        if name in asked:
            assert asked[name].contains(version, prereleases=True), (name, version)


def test_pip_check_passes_here() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("Set up and run the tests", 1)[1].split("```bash\n", 1)[1]
    command = block.split("\n```", 1)[0].strip()
    assert command.startswith("bash .ci/setup dev ")  # the dev tools, on top of the runtime
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == command

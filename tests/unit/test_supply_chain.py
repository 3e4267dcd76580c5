"""The lock files: every dependency pinned to one version with hashes, every floor of
pyproject.toml met, and the install and test scripts installing only from them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^ \\]+) \\$")


def locked(name: str) -> dict[str, tuple[str, int]]:
    """package -> (version, number of hashes) of a lock file."""
    out: dict[str, tuple[str, int]] = {}
    current = None
    for line in (ROOT / name).read_text().splitlines():
        m = PIN.match(line)
        if m:
            current = m.group(1).lower().replace("_", "-").replace(".", "-")
            out[current] = (m.group(2), 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            version, n = out[current]
            out[current] = (version, n + 1)
        elif line and not line.startswith((" ", "#")):
            pytest.fail(f"{name}: not a pinned requirement: {line!r}")
    return out


def norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@pytest.mark.parametrize("lock,extras", [("requirements.lock", []),
                                         ("requirements-test.lock", ["test"])])
def test_lock_pins_every_dependency_with_hashes_past_its_floor(lock: str,
                                                              extras: list[str]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pins = locked(lock)
    assert pins and all(n >= 1 for _, n in pins.values()), lock
    for req in wanted:
        assert norm(req.name) in pins, f"{req.name} is not in {lock}"
        version = Version(pins[norm(req.name)][0])
        assert req.specifier.contains(version, prereleases=True), (
            f"{lock} pins {req.name}=={version}, below pyproject's {req.specifier}")
    assert "setuptools" in pins  # Xenia itself is built without fetching anything


def test_scripts_install_only_from_the_locks() -> None:
    for script, lock in (("install.sh", "requirements.lock"),
                         ("run-tests.sh", "requirements-test.lock")):
        text = (ROOT / script).read_text()
        installs = [line for line in text.splitlines()
                    if "pip" in line and " install" in line and not line.lstrip().startswith("#")]
        assert any("--require-hashes -r" in line and lock in line for line in installs), script
        for line in installs:
            assert "--require-hashes" in line or "--no-deps" in line, (script, line)

"""The lock files: every dependency pinned to one version with hashes, every floor of
pyproject.toml met, no version a known advisory affects (KNOWN_FIXED), and the install and
test scripts installing only from them."""

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


# (package, first fixed version, advisory, must be locked): every version a lock file
# pins must be at least the fixed one. One row an advisory; a package absent from a lock
# (optional: False) is fine. Add a row when an advisory names a dependency, even one the
# locks are past already, so a downgrade cannot bring it back.
KNOWN_FIXED = (
    ("starlette", "0.40.0", "CVE-2024-47874, multipart form DoS", True),
    ("starlette", "0.47.2", "CVE-2025-54121, multipart spooling blocks the loop", True),
    ("starlette", "0.49.1", "GHSA-7f5h-v6xp-fcq8 / CVE-2025-62727, Range header DoS", True),
    ("starlette", "1.0.1", "CVE-2026-48710, Host header in request.url", True),
    ("fastapi", "0.109.1", "CVE-2024-24762, Content-Type ReDoS", True),
    ("h11", "0.16.0", "CVE-2025-43859, chunked-body request smuggling", True),
    ("cryptography", "42.0.4", "CVE-2024-26130, PKCS#12 NULL dereference", True),
    ("cryptography", "44.0.1", "CVE-2024-12797, the OpenSSL in its wheels", True),
    ("cryptography", "46.0.6", "GHSA-m959-cc7f-wv43 / CVE-2026-34073, name constraints",
     True),
    ("cryptography", "46.0.7", "CVE-2026-39892", True),
    ("pydantic", "2.4.0", "GHSA-mr82-8j83-vxmv / CVE-2024-3772, email ReDoS", True),
    ("requests", "2.32.4", "CVE-2024-47081, .netrc credentials to the wrong host", True),
    ("urllib3", "2.5.0", "CVE-2025-50181, redirects not disabled by retries", True),
    ("urllib3", "2.6.0", "GHSA-gm62-xv2j-4w53 / CVE-2025-66418, decompression chain", True),
    ("urllib3", "2.6.0", "CVE-2025-66471, streaming decompression bomb", True),
    ("urllib3", "2.6.3", "CVE-2026-21441, decompression bomb after a redirect", True),
    ("idna", "3.7", "CVE-2024-3651, quadratic idna.encode()", True),
    ("certifi", "2024.7.4", "CVE-2024-39689, GLOBALTRUST roots removed", True),
    ("setuptools", "78.1.1", "CVE-2025-47273, PackageIndex path traversal", True),
    ("pygments", "2.15.0", "CVE-2022-40896, lexer ReDoS", True),
    ("pygments", "2.20.0", "CVE-2026-4539, AdlLexer ReDoS", True),
    ("markdown-it-py", "2.2.0", "GHSA-vrjv-mxr7-vjf8 / CVE-2023-26303, crash on input",
     True),
    ("jinja2", "3.1.6", "CVE-2025-27516, sandbox escape through |attr", False),
    ("httpx", "0.23.0", "CVE-2021-41945, URL parsing", False),
    ("pytest", "9.0.3", "CVE-2025-71176, predictable /tmp/pytest-of-USER", False),
)
LOCKS = ("requirements.lock", "requirements-test.lock")


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


@pytest.mark.parametrize("lock", LOCKS)
def test_locks_are_past_every_known_advisory(lock: str) -> None:
    pins = locked(lock)
    for package, fixed, advisory, required in KNOWN_FIXED:
        if norm(package) not in pins:
            assert not required, f"{package} ({advisory}) is not in {lock}"
            continue
        version = Version(pins[norm(package)][0])
        assert version >= Version(fixed), (
            f"{lock} pins {package}=={version}, which {advisory} affects (fixed in {fixed})")
    # Each row means something: the test lock has every package but jinja2.
    assert {norm(p) for p, *_ in KNOWN_FIXED} - set(locked(LOCKS[1])) == {"jinja2"}


def test_lock_script_builds_past_the_advisories_with_a_pinned_uv() -> None:
    text = (ROOT / "scripts/lock-deps.sh").read_text()
    floors = re.findall(r"setuptools>=([0-9.]+)", text)
    setuptools_fixed = max(Version(f) for p, f, *_ in KNOWN_FIXED if p == "setuptools")
    assert floors and all(Version(f) >= setuptools_fixed for f in floors), floors
    assert re.search(r"^UV_VERSION=[0-9]+\.[0-9]+\.[0-9]+$", text, re.M), "uv not pinned"
    installs = [line for line in text.splitlines() if " install " in line
                and re.search(r"\buv\b", line) and not line.lstrip().startswith("#")]
    assert installs and all('"uv==$UV_VERSION"' in line for line in installs), installs

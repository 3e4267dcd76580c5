"""Fetch and unpack Debian packages with the host's apt, without installing them.

The main class is `DebFetcher`: `resolve()` asks `apt-cache` for the candidate version of a
package (following a metapackage to the one real package it depends on), `download()` runs
`apt-get download` into a cache directory (skipped when a cached file has the SHA256 apt
expects), and `extract()` unpacks with `dpkg-deb -x`. Every tool runs from an argv list,
never through a shell.

Errors are `DebError` with a message that says what to do; callers wrap them in the error
category they need.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from xenia.files import fsync_dir

APT_TIMEOUT = 600  # seconds; a 27 MB kernel package over a slow mirror


class DebError(Exception):
    """A package could not be resolved, fetched or unpacked; the message says how to fix it."""

    def __init__(self, message: str, *, missing_tool: bool = False) -> None:
        super().__init__(message)
        self.missing_tool = missing_tool


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    architecture: str
    filename: str  # path in the archive, pool/main/...
    sha256: str
    size: int

    @property
    def cache_name(self) -> str:
        """File name in the download cache (epoch colon quoted, as apt-get download does)."""
        version = urllib.parse.quote(self.version, safe="+.~-")
        return f"{self.name}_{version}_{self.architecture}.deb"


def _tool_hint(tool: str) -> str:
    hints = {
        "apt-get": "install apt (a Debian or Ubuntu host is required)",
        "apt-cache": "install apt (a Debian or Ubuntu host is required)",
        "dpkg-deb": "install dpkg (apt-get install dpkg)",
    }
    return hints.get(tool, f"install {tool}")


def run_tool(argv: Sequence[str], *, cwd: Path | None = None, timeout: float = APT_TIMEOUT) -> str:
    """Run a host tool, return its stdout; raise DebError with its stderr if it fails."""
    tool = argv[0]
    if shutil.which(tool) is None:
        raise DebError(f"{tool} not found; {_tool_hint(tool)}", missing_tool=True)
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.run(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as e:
        raise DebError(f"{tool} not found; {_tool_hint(tool)}", missing_tool=True) from e
    except subprocess.TimeoutExpired as e:
        raise DebError(f"{' '.join(argv)} did not finish within {timeout:.0f} s") from e
    if proc.returncode != 0:
        raise DebError(_explain(argv, proc.stderr or proc.stdout))
    return proc.stdout


def _explain(argv: Sequence[str], output: str) -> str:
    """Turn apt's error output into one message with a fix."""
    errors = [ln.strip() for ln in output.splitlines() if ln.startswith(("E:", "W:", "dpkg-deb"))]
    detail = "; ".join(errors) if errors else output.strip()[-500:]
    cmd = " ".join(argv[:2])
    if "No packages found" in output or "Unable to locate package" in output:
        return (
            f"{cmd}: {detail}; the package is unknown to apt. The tiny image needs Debian's "
            "package lists (deb.debian.org, component main): run `apt-get update` and retry"
        )
    if re.search(r"\b404\b|Not Found", output):
        return f"{cmd}: {detail}; the package lists are out of date: run `apt-get update` and retry"
    if re.search(
        r"Temporary failure resolving|Could not resolve|Could not connect|"
        r"Failed to fetch|Connection failed|timed out|Unable to connect",
        output,
    ):
        return (
            f"{cmd}: {detail}; cannot reach the Debian mirror: check network access to "
            "deb.debian.org (or the mirror in /etc/apt/sources.list*) and any proxy, then retry"
        )
    return f"{cmd} failed: {detail}"


def _parse_stanza(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # only the first stanza
            continue
        if line[0] in " \t" and key:
            fields[key] += "\n" + line.strip()
            continue
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class DebFetcher:
    def __init__(self, cache_dir: Path, progress: Callable[[str], None] = print) -> None:
        self.cache_dir = cache_dir
        self.progress = progress

    def show(self, package: str) -> DebPackage:
        """The candidate version of `package`, as apt would install it."""
        out = run_tool(["apt-cache", "show", "--no-all-versions", package])
        f = _parse_stanza(out)
        try:
            return DebPackage(
                name=f["Package"],
                version=f["Version"],
                architecture=f["Architecture"],
                filename=f["Filename"],
                sha256=f["SHA256"],
                size=int(f["Size"]),
            )
        except (KeyError, ValueError) as e:
            raise DebError(
                f"apt-cache show {package}: no downloadable candidate ({e}); "
                "run `apt-get update` and retry"
            ) from e

    def resolve_meta(self, metapackage: str, prefix: str) -> DebPackage:
        """Follow a metapackage (linux-image-cloud-amd64) to its dependency named `prefix*`."""
        out = run_tool(["apt-cache", "show", "--no-all-versions", metapackage])
        depends = _parse_stanza(out).get("Depends", "")
        for alt in depends.split(","):
            name = alt.split("|")[0].split("(")[0].strip()
            if name.startswith(prefix):
                return self.show(name)
        raise DebError(
            f"{metapackage} does not depend on a {prefix}* package (Depends: {depends!r})"
        )

    def download(self, pkg: DebPackage) -> Path:
        """The .deb of `pkg` in the cache, downloaded with apt-get if not there (or corrupt)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        target = self.cache_dir / pkg.cache_name
        if target.is_file() and target.stat().st_size == pkg.size:
            if sha256_file(target) == pkg.sha256:
                self.progress(f"Using cached {pkg.name} {pkg.version}")
                return target
        self.progress(f"Downloading {pkg.name} {pkg.version} ({pkg.size / 1e6:.1f} MB)")
        with tempfile.TemporaryDirectory(prefix=".download-", dir=self.cache_dir) as tmp:
            argv = ["apt-get", "download", "-q"]
            if os.geteuid() == 0:
                # As root apt drops to the _apt user, which cannot write into our directory.
                argv += ["-o", "APT::Sandbox::User=root"]
            argv.append(f"{pkg.name}={pkg.version}")
            run_tool(argv, cwd=Path(tmp))
            debs = list(Path(tmp).glob("*.deb"))
            if len(debs) != 1:
                raise DebError(f"apt-get download {pkg.name} left {len(debs)} .deb files")
            got = sha256_file(debs[0])
            if got != pkg.sha256:
                raise DebError(
                    f"{pkg.name} {pkg.version}: SHA256 {got} does not match apt's {pkg.sha256}; "
                    "run `apt-get update` and retry"
                )
            os.replace(debs[0], target)
            fsync_dir(target.parent)
        return target

    def extract(self, deb: Path, dest: Path) -> Path:
        """Unpack `deb` into `dest` (created); nothing is installed on the host."""
        dest.mkdir(parents=True, exist_ok=True)
        run_tool(["dpkg-deb", "-x", "--", str(deb.absolute()), str(dest.absolute())])
        return dest

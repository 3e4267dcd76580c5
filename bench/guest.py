"""Running timed commands in a tiny guest under a private xeniad (for the benchmarks)."""

from __future__ import annotations

from tests.integration.harness import READY, Host, Image, listen  # noqa: F401 - re-exported

from bench.common import tiny_image


def new_host() -> Host:
    kernel, initrd = tiny_image()
    host = Host(Image(kernel, initrd))
    host.env.pop("PYTHONDONTWRITEBYTECODE", None)
    host.start_daemon()
    return host


def timed(host: Host, name: str, command: str, timeout: float = 600) -> float:
    """Seconds `command` took inside the guest, by the guest's own clock."""
    out = host.run(name, "a=$(cut -d' ' -f1 /proc/uptime); " + command +
                   " >/dev/null 2>&1; b=$(cut -d' ' -f1 /proc/uptime); echo $a $b",
                   timeout=timeout)
    a, b = (float(x) for x in out.split()[-2:])
    return b - a

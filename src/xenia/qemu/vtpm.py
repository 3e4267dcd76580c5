"""The vTPM of `vtpm = [...]`: one swtpm process a domain, QEMU's TPM emulator backend
on its control socket; the main functions are start_swtpm and tpm_args.

The TPM's state (its keys, NVRAM) lives in the state directory, `vtpm/<uuid>/`, so it
survives reboots in place; it is removed when the domain's QEMU is released (destroy, or
a new QEMU after config-update or a crash), as the UEFI NVRAM is. swtpm runs with
--terminate: it exits when QEMU, its only client, goes away, so a destroyed domain leaves
none behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

from xenia.errors import BackendError
from xenia.hostos.procfs import cmdline, read_nofollow
from xenia.qemu.opts import escape_opt
from xenia.tools import find_tool, run_tool

SOCKET = "swtpm.sock"
PIDFILE = "swtpm.pid"


def start_swtpm(state_dir: Path, run_dir: Path, owner: tuple[int, int] | None = None,
                timeout: float = 10.0) -> Path:
    """Starts the domain's swtpm (TPM 2.0); returns its control socket, owned by `owner`
    (uid, gid: the confined QEMU's, which must connect to it)."""
    doing = "to start the domain's vTPM"
    exe = find_tool("swtpm", "swtpm", doing)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock = run_dir / SOCKET
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = run_dir / "swtpm.log"
    try:
        run_tool([exe, "socket", "--tpm2", "--tpmstate", f"dir={state_dir},mode=0600",
                  "--ctrl", f"type=unixio,path={sock},mode=0600"
                  + (f",uid={owner[0]},gid={owner[1]}" if owner else ""),
                  "--terminate", "--daemon",
                  "--pid", f"file={run_dir / PIDFILE}", "--log", f"file={log}"],
                 doing, timeout=timeout)
    except BackendError as e:
        # swtpm says why in its log, not on stderr.
        tail = log.read_text(errors="replace").strip()[-300:] if log.exists() else ""
        raise BackendError(f"{e.message}{': ' + tail if tail else ''}") from None
    deadline = time.monotonic() + timeout
    while not sock.exists():
        if time.monotonic() > deadline:
            raise BackendError(f"Failed to start the domain's vTPM: no socket {sock} after "
                               f"{timeout:.0f} s")
        time.sleep(0.02)
    return sock


def stop_swtpm(run_dir: Path) -> None:
    """Ends a swtpm QEMU never connected to (a failed start); else --terminate does.

    The pid file is in the run dir, which QEMU's uid can write: only a process that is
    a swtpm serving this very run dir is signalled (never whatever pid was planted)."""
    try:
        pid = int(read_nofollow(run_dir / PIDFILE, 64).decode().strip())
    except (OSError, ValueError):
        return
    argv = cmdline(pid)
    if not argv or Path(argv[0]).name != "swtpm" or not any(str(run_dir) in a for a in argv):
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)


def tpm_args(sock: Path) -> list[str]:
    """QEMU's TPM 2.0 CRB device on the emulator backend (q35 has no ISA TIS by default
    for TPM 2.0 firmware paths; Linux drives CRB with tpm_crb, built into the kernel)."""
    return ["-chardev", f"socket,id=chrtpm,path={escape_opt(str(sock))}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
            "-device", json.dumps({"driver": "tpm-crb", "id": "vtpm0", "tpmdev": "tpm0"},
                                  separators=(",", ":"))]

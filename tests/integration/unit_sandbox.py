"""Test helper: run a command under what packaging/xeniad.service asks of systemd, where
this machine has no systemd to ask (tests/integration/test_unit_sandbox.py).

    unshare --mount --propagation slave python unit_sandbox.py -- CMD...

Read from the unit file, applied here: ProtectSystem=full (/usr, /boot, /efi, /etc
read-only), ProtectHome=read-only (/home, /root, /run/user), PrivateTmp= (an empty tmpfs
on /tmp and /var/tmp), NoNewPrivileges= and CapabilityBoundingSet= (through setpriv),
ProtectKernelModules= (CAP_SYS_MODULE dropped), and the seccomp-based directives as one
filter loaded through libseccomp: SystemCallArchitectures=native (other ABIs killed),
RestrictAddressFamilies= (socket() of another family fails with EAFNOSUPPORT),
LockPersonality= (personality() to anything but the current one fails with EPERM) and
RestrictRealtime= (sched_setscheduler() to SCHED_FIFO, SCHED_RR or SCHED_DEADLINE fails
with EPERM). systemd's own filters differ in detail (it also filters sched_setattr,
and kills x32 calls by number); docs/security.md says so.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "xeniad.service"

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_GE, SCMP_CMP_EQ, SCMP_CMP_NE, SCMP_CMP_MASKED_EQ = 5, 4, 1, 7
AF_MAX = 46  # linux/socket.h (6.x)
SCHED_REALTIME = (1, 2, 6)  # SCHED_FIFO, SCHED_RR, SCHED_DEADLINE
SCHED_RESET_ON_FORK = 0x40000000


def directives(path: Path = UNIT) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value
    return out


def read_only(path: str) -> None:
    if os.path.isdir(path):
        subprocess.run(["mount", "--bind", path, path], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", path], check=True)


class _Cmp(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def errno_action(err: int) -> int:
    return 0x00050000 | (err & 0xFFFF)  # SCMP_ACT_ERRNO


def seccomp_rules(d: dict[str, str]) -> list[tuple[int, str, tuple[int, int, int, int]]]:
    """(action, syscall, (arg, op, datum_a, datum_b)) of the unit's seccomp directives."""
    rules = []
    families = d.get("RestrictAddressFamilies", "").split()
    if families and not families[0].startswith("~"):
        allowed = {int(getattr(socket, f)) for f in families}
        for family in range(AF_MAX):
            if family not in allowed:
                rules.append((errno_action(errno.EAFNOSUPPORT), "socket",
                              (0, SCMP_CMP_EQ, family, 0)))
        rules.append((errno_action(errno.EAFNOSUPPORT), "socket",
                      (0, SCMP_CMP_GE, AF_MAX, 0)))
    if d.get("LockPersonality") == "yes":
        libc = ctypes.CDLL(None, use_errno=True)
        current = libc.personality(0xFFFFFFFF)
        rules.append((errno_action(errno.EPERM), "personality",
                      (0, SCMP_CMP_NE, current, 0)))
    if d.get("RestrictRealtime") == "yes":
        mask = 0xFFFFFFFFFFFFFFFF & ~SCHED_RESET_ON_FORK
        for policy in SCHED_REALTIME:
            rules.append((errno_action(errno.EPERM), "sched_setscheduler",
                          (1, SCMP_CMP_MASKED_EQ, mask, policy)))
    return rules


def load_seccomp(d: dict[str, str]) -> None:
    """Load the filter into this process; exec keeps it (as systemd's does)."""
    rules = seccomp_rules(d)
    if not rules and d.get("SystemCallArchitectures") != "native":
        return
    if d.get("SystemCallArchitectures", "native") != "native":
        raise SystemExit("unit_sandbox: only SystemCallArchitectures=native is emulated")
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_Cmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    # A new filter holds the native architecture only: calls of any other ABI (i386,
    # x32) meet the default bad-architecture action, which kills.
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise SystemExit("unit_sandbox: seccomp_init failed")
    try:
        for action, name, (arg, op, a, b) in rules:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            cmp = (_Cmp * 1)(_Cmp(arg, op, a, b))
            rc = lib.seccomp_rule_add_array(ctx, action, nr, 1, cmp)
            if rc < 0:
                raise SystemExit(f"unit_sandbox: seccomp rule {name} {arg} {op} {a}: "
                                 f"{os.strerror(-rc)}")
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            raise SystemExit(f"unit_sandbox: seccomp_load: {os.strerror(-rc)}")
    finally:
        lib.seccomp_release(ctx)


def main() -> None:
    args = sys.argv[1:]
    cmd = args[args.index("--") + 1:]
    d = directives()
    system = d.get("ProtectSystem", "no")
    if system in ("yes", "full", "strict"):
        for p in ("/usr", "/boot", "/efi") + (("/etc",) if system != "yes" else ()):
            read_only(p)
    if d.get("ProtectHome") == "read-only":
        for p in ("/home", "/root", "/run/user"):
            read_only(p)
    if d.get("PrivateTmp") == "yes":
        for p in ("/tmp", "/var/tmp"):
            subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev",
                            "private-tmp", p], check=True)
    setpriv = ["setpriv"]
    if d.get("NoNewPrivileges") == "yes":
        setpriv.append("--no-new-privs")
    drop = []
    bounding = d.get("CapabilityBoundingSet", "")
    if bounding.startswith("~"):
        drop = [c.lower().removeprefix("cap_") for c in bounding[1:].split()]
    if d.get("ProtectKernelModules") == "yes" and "sys_module" not in drop:
        drop.append("sys_module")
    if drop:
        setpriv.append("--bounding-set=" + ",".join("-" + c for c in drop))
    # Last: the filter binds setpriv and what it execs, not the mounts above.
    load_seccomp(d)
    os.execvp(setpriv[0], [*setpriv, "--", *cmd])


if __name__ == "__main__":
    main()

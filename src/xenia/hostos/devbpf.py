"""The device allow-list on cgroup v2: a BPF_PROG_TYPE_CGROUP_DEVICE program.

cgroup v2 has no devices.allow; the kernel asks the BPF programs attached to a task's v2
cgroup (and its ancestors) instead, at every open/mknod of a device node. As runc
(libcontainer/cgroups/devices/devicefilter.go) and crun do, the program is assembled here
from the rules, loaded with bpf(2) (license "GPL"), and attached to the group's directory
with BPF_F_ALLOW_MULTI (every program attached on the way up must allow an access: a
parent's program is never overridden). Default deny.

The program's context is struct bpf_cgroup_dev_ctx {u32 access_type; u32 major; u32 minor}
with access_type = (access << 16) | type. Each rule is a block that jumps to the next
block on any mismatch, and returns 1 (allow) if all of type, access, major and minor fit;
after the last block, return 0.

Lifetime: an attached program is held by its cgroup, not by the fd that loaded it (closed
at once here): it outlives xeniad, and goes when it is detached or the cgroup is removed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
import struct
from dataclasses import dataclass
from typing import Any

# bpf(2) commands and constants (include/uapi/linux/bpf.h)
SYS_BPF = 321  # x86_64
BPF_PROG_LOAD, BPF_PROG_ATTACH, BPF_PROG_DETACH = 5, 8, 9
BPF_PROG_GET_FD_BY_ID, BPF_PROG_QUERY = 13, 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6  # attach type
BPF_F_ALLOW_MULTI = 2
DEV_BLOCK, DEV_CHAR = 1, 2  # BPF_DEVCG_DEV_*
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4  # BPF_DEVCG_ACC_*
_ACCESS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}
ATTR_SIZE = 128  # bytes of union bpf_attr we fill; the rest must be zero anyway

# Opcodes used (class | op | source)
LDX_MEM_W = 0x61  # BPF_LDX | BPF_MEM | BPF_W
AND64_K = 0x57  # BPF_ALU64 | BPF_AND | BPF_K
RSH64_K = 0x77  # BPF_ALU64 | BPF_RSH | BPF_K
MOV64_K = 0xB7  # BPF_ALU64 | BPF_MOV | BPF_K
MOV64_X = 0xBF  # BPF_ALU64 | BPF_MOV | BPF_X
JNE_K = 0x55  # BPF_JMP | BPF_JNE | BPF_K
JNE_X = 0x5D  # BPF_JMP | BPF_JNE | BPF_X
EXIT = 0x95  # BPF_JMP | BPF_EXIT


@dataclass(frozen=True)
class Rule:
    """One allowed device: kind "c", "b" or "a" (any); major/minor None = any; access
    a subset of "rwm"."""

    kind: str
    major: int | None
    minor: int | None
    access: str = "rwm"

    @classmethod
    def of_node(cls, path: str, access: str = "rwm") -> Rule:
        st = os.stat(path)
        if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise OSError(errno.EINVAL, f"{path} is not a device node")
        return cls("c" if stat.S_ISCHR(st.st_mode) else "b", os.major(st.st_rdev),
                   os.minor(st.st_rdev), access)

    def __str__(self) -> str:  # devices.allow's form
        def num(n: int | None) -> str:
            return "*" if n is None else str(n)
        return f"{self.kind} {num(self.major)}:{num(self.minor)} {self.access}"


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One struct bpf_insn: u8 code, u8 dst:4|src:4, s16 off, s32 imm (little endian)."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _block(rule: Rule) -> list[bytes]:
    """The instructions of one rule; each mismatch jumps past the block's end. Registers
    (set by the prologue): R2 type, R3 access, R4 major, R5 minor."""
    if rule.kind not in ("a", "b", "c") or not rule.access or set(rule.access) - set("rwm"):
        raise ValueError(f"not a device rule: {rule}")
    checks: list[list[bytes]] = []
    if rule.kind != "a":
        checks.append([insn(JNE_K, 2, imm=DEV_CHAR if rule.kind == "c" else DEV_BLOCK)])
    mask = sum(_ACCESS[a] for a in set(rule.access))
    if mask != ACC_MKNOD | ACC_READ | ACC_WRITE:
        # allowed only if every bit asked for is in the mask: (R3 & mask) == R3
        checks.append([insn(MOV64_X, 1, 3), insn(AND64_K, 1, imm=mask),
                       insn(JNE_X, 1, 3)])
    if rule.major is not None:
        checks.append([insn(JNE_K, 4, imm=rule.major)])
    if rule.minor is not None:
        checks.append([insn(JNE_K, 5, imm=rule.minor)])
    tail = [insn(MOV64_K, 0, imm=1), insn(EXIT)]
    out: list[bytes] = []
    left = sum(len(c) for c in checks) + len(tail)
    for c in checks:
        # every jump in a check is its last instruction: skip what follows in the block
        left -= len(c)
        *pre, jump = c
        out += pre
        code, regs, _off, imm = struct.unpack("<BBhi", jump)
        out.append(struct.pack("<BBhi", code, regs, left, imm))
    return out + tail


def assemble(rules: list[Rule]) -> bytes:
    """The program allowing exactly `rules` (default deny)."""
    prog = [
        insn(LDX_MEM_W, 2, 1, 0),  # R2 = ctx->access_type
        insn(AND64_K, 2, imm=0xFFFF),  # R2 = type
        insn(LDX_MEM_W, 3, 1, 0),
        insn(RSH64_K, 3, imm=16),  # R3 = access
        insn(LDX_MEM_W, 4, 1, 4),  # R4 = major
        insn(LDX_MEM_W, 5, 1, 8),  # R5 = minor
    ]
    for rule in rules:
        prog += _block(rule)
    prog += [insn(MOV64_K, 0, imm=0), insn(EXIT)]
    return b"".join(prog)


# -- bpf(2) ----------------------------------------------------------------------------
_libc: Any = None


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    ret = int(_libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_int(cmd), attr,
                            ctypes.c_uint(ATTR_SIZE)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _attr(fmt: str, *values: int) -> ctypes.Array[ctypes.c_char]:
    buf = ctypes.create_string_buffer(ATTR_SIZE)
    struct.pack_into(fmt, buf, 0, *values)
    return buf


def load(rules: list[Rule]) -> int:
    """Load the program for `rules`; its fd. OSError with the verifier's log if refused
    (EINVAL without a log: the kernel lacks CONFIG_CGROUP_BPF)."""
    code = assemble(rules)
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)
    attr = _attr("<IIQQIIQ", BPF_PROG_TYPE_CGROUP_DEVICE, len(code) // 8,
                 ctypes.addressof(insns), ctypes.addressof(lic), 1, len(log),
                 ctypes.addressof(log))
    struct.pack_into("16s", attr, 48, b"xenia_devices")  # prog_name, shown by bpftool
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as e:
        text = log.value.decode(errors="replace").strip()
        raise OSError(e.errno, f"{e.strerror}{'; verifier: ' + text if text else ''}") from e


def attach(cgroup_fd: int, prog_fd: int) -> None:
    _bpf(BPF_PROG_ATTACH, _attr("<IIII", cgroup_fd, prog_fd, BPF_CGROUP_DEVICE,
                                BPF_F_ALLOW_MULTI))


def detach(cgroup_fd: int, prog_fd: int) -> None:
    _bpf(BPF_PROG_DETACH, _attr("<III", cgroup_fd, prog_fd, BPF_CGROUP_DEVICE))


def query(cgroup_fd: int) -> list[int]:
    """Ids of the device programs attached to the group itself (not its ancestors')."""
    ids = (ctypes.c_uint32 * 64)()
    attr = _attr("<IIIIQI", cgroup_fd, BPF_CGROUP_DEVICE, 0, 0, ctypes.addressof(ids), 64)
    _bpf(BPF_PROG_QUERY, attr)
    count = struct.unpack_from("<I", attr, 24)[0]
    return [int(ids[i]) for i in range(min(count, 64))]


def prog_fd_by_id(prog_id: int) -> int:
    return _bpf(BPF_PROG_GET_FD_BY_ID, _attr("<I", prog_id))


def install(group: str, rules: list[Rule]) -> None:
    """Make `rules` the allow-list of v2 cgroup directory `group`: attach the new program,
    then detach the ones attached before (while both are attached both must allow, so no
    access outside the old or the new list is ever allowed in between)."""
    gfd = os.open(group, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        before = query(gfd)
        prog = load(rules)
        try:
            attach(gfd, prog)
        finally:
            os.close(prog)  # the attachment holds the program now
        _detach_ids(gfd, before)
    finally:
        os.close(gfd)


def uninstall(group: str) -> None:
    """Detach every device program from `group` (before it is removed)."""
    gfd = os.open(group, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _detach_ids(gfd, query(gfd))
    finally:
        os.close(gfd)


def _detach_ids(gfd: int, ids: list[int]) -> None:
    for prog_id in ids:
        try:
            pfd = prog_fd_by_id(prog_id)
        except FileNotFoundError:
            continue  # gone meanwhile
        try:
            detach(gfd, pfd)
        finally:
            os.close(pfd)

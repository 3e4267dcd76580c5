"""The capabilities of a container domain's processes: the default set, and `cap_add` /
`cap_drop` (Xenia's config keys) on top of it.

Pure data and functions, used by the config parser (names checked at load time) and by
the OCI spec (containers/spec.py) and its seccomp profile (containers/seccomp.py), which
allows a few more calls for some added capabilities, as Docker's profile does.
"""

from __future__ import annotations

from collections.abc import Iterable

# Every capability Linux knows (capability.h, up to 6.x), in their numeric order.
ALL = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)

# Docker's default set without CAP_MKNOD (no container may make device nodes: Xenia sets
# no device cgroup, and the rootfs overlay is nodev), plus CAP_SYS_BOOT: reboot() in a
# child pid namespace only ends that namespace's init, which is how a container reboots
# or powers off from inside (kexec_load also wants CAP_SYS_BOOT, but of the host's user
# namespace, and seccomp refuses it anyway). Not CAP_NET_ADMIN: Xenia configures the
# container's NICs from the host (containers/netconf.py); a container that manages its
# own network (DHCP, routes, nftables) asks for it with cap_add.
DEFAULT = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE", "CAP_SYS_BOOT",
)


def normalize(name: str) -> str | None:
    """`name` as the kernel spells it ("net_admin", "NET_ADMIN" -> "CAP_NET_ADMIN");
    None if Linux has no such capability."""
    text = name.strip().upper()
    if not text.startswith("CAP_"):
        text = "CAP_" + text
    return text if text in ALL else None


def effective(add: Iterable[str] = (), drop: Iterable[str] = ()) -> list[str]:
    """DEFAULT plus `add` minus `drop` (normalized names), in the kernel's order.
    "ALL" in `drop` drops every capability, as Docker's --cap-drop=ALL does."""
    dropped = set(drop)
    have = set() if "ALL" in dropped else set(DEFAULT) - dropped
    have |= set(add)
    return [c for c in ALL if c in have]

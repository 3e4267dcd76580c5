"""The seccomp profile of a container domain (the `linux.seccomp` of its config.json).

Main entry point: `profile(caps, machine)`. An allow-list: every call not named here fails
with EPERM (`defaultAction` SCMP_ACT_ERRNO), as in Docker's default profile, which is the
baseline (moby profiles/seccomp/default.json). The same shape:

- the calls any unprivileged program needs (files, memory, processes, signals, time,
  sockets, IPC), allowed unconditionally;
- `clone` only without namespace flags (a new user, mount, network... namespace is the
  way to most kernel attack surface), `clone3` answered ENOSYS (its flags sit in memory
  seccomp cannot read; libc then falls back to clone), `unshare`, `setns`, `mount` and
  friends not at all -- unless the config adds CAP_SYS_ADMIN, and then as Docker does;
- `personality` only with the values programs use (Linux, 32-bit, UNAME26, query);
- calls whose only use needs a capability, allowed when the container has it (`reboot`
  with CAP_SYS_BOOT, `chroot` with CAP_SYS_CHROOT, `perf_event_open` with CAP_PERFMON,
  ...); `ptrace` is allowed as in Docker (since Linux 4.8 seccomp cannot be bypassed
  through it);
- per-architecture calls (arch_prctl, modify_ldt on x86...).

Tighter than Docker's:
- `socket` only for the families a container's programs use: AF_UNIX, AF_INET,
  AF_INET6, AF_NETLINK and AF_PACKET (Docker refuses only AF_VSOCK). The others (vsock,
  which reaches the hypervisor when the host is a VM, RDS, TIPC, CAN, X.25, ALG, ...) are
  rarely used and were behind many kernel privilege escalations;
- no io_uring (io_uring_setup, _enter, _register): most kernel exploits of recent years
  went through it, and it bypasses the per-call filter (moby later dropped it too);
- no name_to_handle_at (its only use is open_by_handle_at, which needs a capability a
  container does not have).
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from typing import Any

EPERM = 1
ENOSYS = 38

_FILES = """
    access faccessat faccessat2 chdir fchdir getcwd chmod fchmod fchmodat fchmodat2
    chown fchown fchownat lchown chown32 fchown32 lchown32
    open openat openat2 creat close close_range dup dup2 dup3 fcntl fcntl64 flock
    read readv pread64 preadv preadv2 write writev pwrite64 pwritev pwritev2
    lseek _llseek sendfile sendfile64 splice tee vmsplice copy_file_range readahead
    stat fstat lstat newfstatat stat64 fstat64 lstat64 fstatat64 statx statfs fstatfs
    statfs64 fstatfs64 getdents getdents64
    mkdir mkdirat rmdir rename renameat renameat2 link linkat unlink unlinkat symlink
    symlinkat readlink readlinkat mknod mknodat umask
    truncate ftruncate truncate64 ftruncate64 fallocate fadvise64 fadvise64_64
    fsync fdatasync sync syncfs sync_file_range
    utime utimes utimensat utimensat_time64 futimesat
    getxattr lgetxattr fgetxattr setxattr lsetxattr fsetxattr listxattr llistxattr
    flistxattr removexattr lremovexattr fremovexattr
    inotify_init inotify_init1 inotify_add_watch inotify_rm_watch fanotify_mark
    io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents
    io_pgetevents_time64 ioctl memfd_create memfd_secret
"""
_MEMORY = """
    brk mmap mmap2 munmap mremap mprotect madvise mincore msync mlock mlock2 mlockall
    munlock munlockall remap_file_pages membarrier pkey_alloc pkey_free pkey_mprotect
"""
_PROCESSES = """
    execve execveat exit exit_group fork vfork clone wait4 waitid waitpid
    getpid getppid gettid getpgid setpgid getpgrp getsid setsid
    getuid geteuid getgid getegid getuid32 geteuid32 getgid32 getegid32
    getresuid getresgid getresuid32 getresgid32 getgroups getgroups32
    setuid setgid setuid32 setgid32 setreuid setregid setreuid32 setregid32
    setresuid setresgid setresuid32 setresgid32 setfsuid setfsgid setfsuid32 setfsgid32
    setgroups setgroups32 capget capset prctl seccomp
    getrlimit setrlimit prlimit64 ugetrlimit getrusage getpriority setpriority
    ioprio_get ioprio_set sched_yield sched_getaffinity sched_setaffinity
    sched_getattr sched_setattr sched_getparam sched_setparam sched_getscheduler
    sched_setscheduler sched_get_priority_max sched_get_priority_min
    sched_rr_get_interval sched_rr_get_interval_time64
    set_tid_address set_robust_list get_robust_list rseq restart_syscall
    futex futex_time64 futex_waitv get_thread_area set_thread_area getcpu
    uname sysinfo getrandom times landlock_create_ruleset landlock_add_rule
    landlock_restrict_self pidfd_open pidfd_send_signal process_mrelease
    ptrace process_vm_readv process_vm_writev
"""
_SIGNALS_AND_TIME = """
    kill tkill tgkill rt_sigaction rt_sigprocmask rt_sigpending rt_sigsuspend
    rt_sigtimedwait rt_sigtimedwait_time64 rt_sigqueueinfo rt_tgsigqueueinfo
    rt_sigreturn sigreturn sigaltstack sigprocmask signalfd signalfd4 pause alarm
    nanosleep clock_nanosleep clock_nanosleep_time64 clock_gettime clock_gettime64
    clock_getres clock_getres_time64 gettimeofday time adjtimex clock_adjtime
    clock_adjtime64 getitimer setitimer timer_create timer_delete timer_gettime
    timer_gettime64 timer_settime timer_settime64 timer_getoverrun timerfd_create
    timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64
"""
_WAITING_AND_IPC = """
    poll ppoll ppoll_time64 select _newselect pselect6 pselect6_time64
    epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_wait epoll_wait_old
    epoll_pwait epoll_pwait2 eventfd eventfd2 pipe pipe2
    ipc msgget msgsnd msgrcv msgctl semget semop semtimedop semtimedop_time64 semctl
    shmget shmat shmdt shmctl mq_open mq_unlink mq_timedsend mq_timedsend_time64
    mq_timedreceive mq_timedreceive_time64 mq_notify mq_getsetattr
"""
# socket itself is allowed per family (SOCKET_FAMILIES). socketcall (32-bit x86's
# multiplexer) passes its arguments in memory seccomp cannot read: allowed as in Docker.
_SOCKETS = """
    socketpair bind connect listen accept accept4 getsockname getpeername getsockopt
    setsockopt shutdown send sendto sendmsg sendmmsg recv recvfrom recvmsg recvmmsg
    recvmmsg_time64 socketcall
"""
ALWAYS = frozenset(" ".join((_FILES, _MEMORY, _PROCESSES, _SIGNALS_AND_TIME,
                             _WAITING_AND_IPC, _SOCKETS)).split())

# Calls Docker's profile allows that this one does not (see the module docstring).
REFUSED = frozenset({"io_uring_setup", "io_uring_enter", "io_uring_register",
                     "name_to_handle_at"})

# Calls allowed only with a capability (Docker's "includes": {"caps": [...]}).
BY_CAPABILITY: dict[str, tuple[str, ...]] = {
    "CAP_SYS_ADMIN": ("bpf", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen",
                      "fspick", "lookup_dcookie", "mount", "mount_setattr", "move_mount",
                      "open_tree", "perf_event_open", "quotactl", "quotactl_fd",
                      "setdomainname", "sethostname", "setns", "syslog", "umount",
                      "umount2", "unshare"),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("init_module", "finit_module", "delete_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": ("kcmp", "pidfd_getfd", "process_madvise"),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
}

# platform.machine() -> (seccomp architectures, calls of that architecture only).
ARCHES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "x86_64": (("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
               ("arch_prctl", "modify_ldt")),
    "aarch64": (("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
                ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2",
                 "breakpoint", "cacheflush", "set_tls")),
    "ppc64le": (("SCMP_ARCH_PPC64LE",), ("sync_file_range2", "swapcontext")),
    "s390x": (("SCMP_ARCH_S390X", "SCMP_ARCH_S390"),
              ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr")),
    "riscv64": (("SCMP_ARCH_RISCV64",), ("riscv_flush_icache",)),
}

SOCKET_FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16,
                   "AF_PACKET": 17}
# personality(2) values programs set: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|LINUX32,
# and 0xffffffff, which only asks for the current one.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
# CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET: clone with any of them is
# refused (without CAP_SYS_ADMIN).
CLONE_NAMESPACES = 0x7E020000


def supported(machine: str | None = None) -> bool:
    return (machine or platform.machine()) in ARCHES


def _arg(index: int, value: int, op: str = "SCMP_CMP_EQ",
         mask: int | None = None) -> dict[str, Any]:
    # SCMP_CMP_MASKED_EQ compares (arg & value) == valueTwo.
    if mask is not None:
        return {"index": index, "value": mask, "valueTwo": value, "op": op}
    return {"index": index, "value": value, "op": op}


def profile(caps: Iterable[str], machine: str | None = None) -> dict[str, Any]:
    """The `linux.seccomp` document for a container with capabilities `caps` on
    `machine` (default: this host's). KeyError for an architecture not in ARCHES."""
    arches, arch_calls = ARCHES[machine or platform.machine()]
    have = set(caps)
    allowed = set(ALWAYS) | set(arch_calls)
    for cap, calls in BY_CAPABILITY.items():
        if cap in have:
            allowed.update(calls)
    admin = "CAP_SYS_ADMIN" in have
    clone_arg = 1 if arches[0] == "SCMP_ARCH_S390X" else 0  # s390 swaps clone's args
    if not admin:
        allowed.discard("clone")
    allowed -= REFUSED
    rules: list[dict[str, Any]] = [
        {"names": sorted(allowed), "action": "SCMP_ACT_ALLOW"},
    ]
    if not admin:
        rules.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                      "args": [_arg(clone_arg, 0, "SCMP_CMP_MASKED_EQ", CLONE_NAMESPACES)]})
        rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
    # One rule per value: the conditions of one rule must all hold, rules are alternatives.
    for family in SOCKET_FAMILIES.values():
        rules.append({"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                      "args": [_arg(0, family)]})
    for persona in PERSONALITIES:
        rules.append({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                      "args": [_arg(0, persona)]})
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": list(arches),
        "syscalls": rules,
    }

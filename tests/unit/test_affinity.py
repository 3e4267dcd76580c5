"""vCPU pinning helpers: CPULIST resolution, formatting, and real threads' affinity/stats."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenia.errors import InvalidConfig, NotFound
from xenia.hostos import affinity
from xenia.hostos.affinity import (
    format_cpulist,
    get_thread_affinity,
    parse_kernel_cpulist,
    resolve_cpulist,
    set_thread_affinity,
)
from xenia.hostos.procfs import ThreadStats, parse_stat, process_threads, thread_stats

NODES = {0: {0, 1, 2, 3}, 1: {4, 5, 6, 7}}


# -- resolve_cpulist -----------------------------------------------------------------------
@pytest.mark.parametrize(("text", "cpus"), [
    ("all", set(range(8))),
    ("0", {0}),
    ("0-3,5", {0, 1, 2, 3, 5}),
    ("0-7,^1", {0, 2, 3, 4, 5, 6, 7}),
    ("all,^0-5", {6, 7}),
    (" 1 , , 2 ", {1, 2}),
    ("node:1", {4, 5, 6, 7}),
    ("nodes:0-1,^node:0", {4, 5, 6, 7}),
    ("node:0,6", {0, 1, 2, 3, 6}),
    ("^1,0-2", {0, 1, 2}),  # left to right: the later term adds 1 back
    ("all,^9", set(range(8))),  # removing a CPU this host lacks is harmless
    ("node:1,^node:5", {4, 5, 6, 7}),
])
def test_resolve(text: str, cpus: set[int]) -> None:
    assert resolve_cpulist(text, 8, nodes=NODES) == cpus


def test_resolve_missing_cpu_names_the_host() -> None:
    with pytest.raises(InvalidConfig) as e:
        resolve_cpulist("7", 2)
    assert e.value.message == ("Failed to pin: CPU 7 does not exist on this host "
                               "(it has CPUs 0-1)")
    with pytest.raises(InvalidConfig, match=r"CPUs 2-3 do not exist .*it has CPUs 0-1\)"):
        resolve_cpulist("0-3,8", 2)


def test_resolve_missing_node() -> None:
    with pytest.raises(InvalidConfig, match=r"NUMA node 2 does not exist on this host "
                                            r"\(it has nodes 0-1\)"):
        resolve_cpulist("node:2", 8, nodes=NODES)


@pytest.mark.parametrize("text", ["^0,^1", "1,^1", "0-1,^node:0"])
def test_resolve_empty(text: str) -> None:
    with pytest.raises(InvalidConfig, match=r"selects no CPU on this host"):
        resolve_cpulist(text, 8, nodes=NODES)


@pytest.mark.parametrize("text", ["", "x", "^all", "3-1", "1-", "all-3"])
def test_resolve_bad_syntax(text: str) -> None:
    with pytest.raises(InvalidConfig, match=r"^Failed to pin: "):
        resolve_cpulist(text, 8)


def test_resolve_doing_words_the_error() -> None:
    with pytest.raises(InvalidConfig, match=r"^Failed to apply cpus= of 'vm1': CPU 9"):
        resolve_cpulist("9", 2, doing="apply cpus= of 'vm1'")


def test_resolve_this_host() -> None:
    online = parse_kernel_cpulist(open("/sys/devices/system/cpu/online").read())
    assert resolve_cpulist("all") == online
    assert resolve_cpulist("node:0") <= online
    assert resolve_cpulist(f"^{max(online)},all") == online


def test_no_numa_dir_means_one_node(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(affinity, "SYS_NODE", tmp_path / "missing")
    assert affinity.host_nodes({0, 1}) == {0: {0, 1}}
    assert resolve_cpulist("node:0", 2) == {0, 1}


# -- formatting ----------------------------------------------------------------------------
@pytest.mark.parametrize(("cpus", "text"), [
    (set(), "none"),
    ({0}, "0"),
    ({0, 1, 2, 3, 5}, "0-3,5"),
    ({1, 3, 5}, "1,3,5"),
    ({0, 1, 2, 3, 4, 5, 6, 7}, "all"),
    ({0, 1, 2, 3, 4, 5, 6}, "0-6"),
])
def test_format(cpus: set[int], text: str) -> None:
    assert format_cpulist(cpus, 8) == text


@given(st.sets(st.integers(0, 63), min_size=1))
def test_format_round_trips(cpus: set[int]) -> None:
    text = format_cpulist(cpus, 64)
    assert resolve_cpulist(text, 64, nodes={0: set(range(64))}) == cpus


def test_parse_kernel_cpulist() -> None:
    assert parse_kernel_cpulist("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert parse_kernel_cpulist("\n") == set()


# -- /proc stat ------------------------------------------------------------------------------
def _stat_line(name: str, state: str = "S", utime: int = 150, stime: int = 50,
               cpu: int = 3) -> str:
    tail = ["0"] * 49
    tail[0] = state  # field 3
    tail[11], tail[12] = str(utime), str(stime)  # fields 14, 15
    tail[36] = str(cpu)  # field 39
    return f"4242 ({name}) " + " ".join(tail) + "\n"


@pytest.mark.parametrize("name", ["qemu-system-x86", "CPU 0/KVM", "a) b (c", "x)", "(", ""])
def test_parse_stat_odd_names(name: str) -> None:
    tck = os.sysconf("SC_CLK_TCK")
    st_ = parse_stat(_stat_line(name))
    assert st_ == ThreadStats(state="S", cpu_time=200 / tck, last_cpu=3, name=name)


def test_parse_stat_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_stat("4242 (x) S 1 2")


# -- real threads ----------------------------------------------------------------------------
@pytest.fixture
def worker() -> Iterator[int]:
    """A thread of this process that spins until told to stop; yields its thread id."""
    stop = threading.Event()
    ready = threading.Event()
    tid: list[int] = []

    def run() -> None:
        # A name with blanks and parentheses, as /proc shows it: the parser must cope.
        ctypes.CDLL(None).prctl(15, b"spin (x) 1", 0, 0, 0)  # PR_SET_NAME
        tid.append(threading.get_native_id())
        ready.set()
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            pass

    t = threading.Thread(target=run, name="spinner", daemon=True)
    t.start()
    ready.wait(5)
    try:
        yield tid[0]
    finally:
        stop.set()
        t.join(5)


def _two_cpus() -> list[int]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two usable CPUs")
    return cpus[:2]


def test_pin_own_thread(worker: int) -> None:
    a, b = _two_cpus()
    before = get_thread_affinity(0)
    set_thread_affinity(worker, {b})
    assert get_thread_affinity(worker) == {b}
    # Only the thread moved, not the process (or this, the main thread).
    assert get_thread_affinity(0) == before
    deadline = time.monotonic() + 5
    while thread_stats(os.getpid(), worker).last_cpu != b and time.monotonic() < deadline:
        time.sleep(0.01)
    assert thread_stats(os.getpid(), worker).last_cpu == b
    set_thread_affinity(worker, {a})
    deadline = time.monotonic() + 5
    while thread_stats(os.getpid(), worker).last_cpu != a and time.monotonic() < deadline:
        time.sleep(0.01)
    assert thread_stats(os.getpid(), worker).last_cpu == a


def test_stats_of_spinning_thread(worker: int) -> None:
    s1 = thread_stats(os.getpid(), worker)
    assert s1.name == "spin (x) 1"
    deadline = time.monotonic() + 30
    while (s2 := thread_stats(os.getpid(), worker)).cpu_time - s1.cpu_time <= 0.2:
        assert time.monotonic() < deadline, "the spinning thread got no CPU time in 30 s"
        time.sleep(0.02)
    assert s2.state == "R"
    assert worker in process_threads(os.getpid())


CHILD = r"""
import ctypes, sys, threading, time
libc = ctypes.CDLL(None)
named = threading.Barrier(3)
def vcpu(i):
    # Like QEMU's vCPU threads: a blank and a slash in the name.
    libc.prctl(15, f"CPU {i}/KVM".encode(), 0, 0, 0)
    named.wait()
    time.sleep(60)
for i in range(2):
    threading.Thread(target=vcpu, args=(i,), daemon=True).start()
named.wait()  # both threads have their names
print("ready", flush=True)
sys.stdin.readline()
"""


def test_child_threads_pin_and_stats() -> None:
    a, b = _two_cpus()
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        tids = process_threads(p.pid)
        vcpus = {thread_stats(p.pid, t).name: t for t in tids}
        assert {"CPU 0/KVM", "CPU 1/KVM"} <= vcpus.keys()
        set_thread_affinity(vcpus["CPU 0/KVM"], {a})
        set_thread_affinity(vcpus["CPU 1/KVM"], {b})
        assert get_thread_affinity(vcpus["CPU 0/KVM"]) == {a}
        assert get_thread_affinity(vcpus["CPU 1/KVM"]) == {b}
        assert get_thread_affinity(p.pid) == set(os.sched_getaffinity(0))  # main untouched
        st_ = thread_stats(p.pid, vcpus["CPU 1/KVM"])
        assert st_.state == "S" and st_.cpu_time >= 0 and st_.last_cpu >= 0
        with pytest.raises(NotFound, match=r"no such thread"):
            thread_stats(p.pid, p.pid + 100000)
    finally:
        p.kill()
        p.wait()
    with pytest.raises(NotFound, match=r"no such thread"):
        set_thread_affinity(p.pid, {a})
    with pytest.raises(NotFound):
        get_thread_affinity(p.pid)
    with pytest.raises(NotFound, match=r"no such process"):
        process_threads(p.pid)


def test_pin_to_nothing_usable(worker: int) -> None:
    with pytest.raises(InvalidConfig, match=r"no CPU given"):
        set_thread_affinity(worker, set())
    with pytest.raises(InvalidConfig, match=r"offline, or outside the cpuset"):
        set_thread_affinity(worker, {1000})

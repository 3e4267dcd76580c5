"""Per-domain cgroups against the real cgroupfs of this host (as root), plus layout detection
and the v2 file formats on a fake tree (a pure v2 host cannot be had on a hybrid one)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from xenia.errors import InUse, InvalidConfig, NotFound, NotSupported
from xenia.hostos import cgroups
from xenia.hostos.cgroupfs import CgroupLayout, Hierarchy, host_layout
from xenia.hostos.cgroups import (
    DomainCgroup,
    collect_garbage,
    cpu_weight_to_weight,
    domain_keys,
    shares_to_weight,
    weight_to_cpu_weight,
    weight_to_shares,
)

SLEEP = "import time; time.sleep(60)"
BUSY = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass"
THREADS = r"""
import sys, threading, time
for _ in range(3):
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()  # then one more thread, started after the attach
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
print("more", flush=True)
time.sleep(60)
"""
HOG = r"""
import sys
sys.stdin.readline()
chunks = []
for _ in range(64):  # 512 MiB at most, in touched 8 MiB pieces
    chunks.append(b"x" * (8 << 20))
print("survived", flush=True)
"""


def _can_write_cgroups() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        used = host_layout().used()
    except Exception:
        return False
    return bool(used) and all(os.access(h.mount, os.W_OK) for h in used)


needs_root = pytest.mark.skipif(not _can_write_cgroups(),
                                reason="needs root and a writable cgroupfs")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def _throttled(cg: DomainCgroup) -> int:
    """Periods in which the group was held back by its cap (cpu.stat, v1 and v2)."""
    for line in (cg.path("cpu") / "cpu.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "nr_throttled":
            return int(value)
    raise AssertionError("cpu.stat has no nr_throttled")


class Env:
    """Groups under a root of this test's own and child processes; all cleaned up after."""

    def __init__(self) -> None:
        self.root = f"xenia-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.groups: list[DomainCgroup] = []
        self.procs: list[subprocess.Popen[str]] = []

    def group(self, key: str = "dom", layout: CgroupLayout | None = None) -> DomainCgroup:
        cg = DomainCgroup.create(key, name=f"vm-{key}", root=self.root, layout=layout)
        self.groups.append(cg)
        return cg

    def spawn(self, code: str) -> subprocess.Popen[str]:
        p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def cpu_window(self, seconds: float = 0.5) -> None:
        """Until a busy process outside the test's groups has had `seconds` of CPU: a
        window in which a runnable process in a group would have had CPU too, however
        loaded the machine is (a fixed sleep is not, on a busy one)."""
        ref = self.spawn(BUSY)
        try:
            _wait(lambda: _cpu_seconds(ref.pid) >= seconds, "CPU time of the reference")
        finally:
            ref.kill()

    def close(self) -> None:
        for p in self.procs:
            p.kill()
        # A process frozen by a v1 freezer dies only once thawed: remove() thaws first.
        for cg in self.groups:
            try:
                cg.remove(timeout=5.0, evict=True)
            except Exception as e:  # keep cleaning
                print(f"cleanup of {cg}: {e}", file=sys.stderr)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                print(f"child {p.pid} did not exit", file=sys.stderr)
        for h in host_layout().hierarchies:
            try:
                (h.mount / self.root).rmdir()
            except FileNotFoundError:
                pass


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    try:
        yield e
    finally:
        e.close()


@pytest.fixture
def v2_layout() -> CgroupLayout:
    """The host's v2 hierarchy alone (on this hybrid host: freezer and CPU time only)."""
    v2 = tuple(h for h in host_layout().hierarchies if h.version == 2)
    if not v2 or not os.access(v2[0].mount, os.W_OK):
        pytest.skip("no writable cgroup v2 hierarchy")
    return CgroupLayout(v2)


def _groups_of(path: Path) -> dict[str, str]:
    """A /proc/.../cgroup file as {controller or "" (v2): path}."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        _, ctrls, rel = line.split(":", 2)
        for c in ctrls.split(",") if ctrls else [""]:
            out[c] = rel
    return out


def _assert_in_group(pid: int, cg: DomainCgroup) -> None:
    tids = os.listdir(f"/proc/{pid}/task")
    assert tids
    want = f"/{cg.root}/{cg.key}"
    for tid in tids:
        groups = _groups_of(Path(f"/proc/{pid}/task/{tid}/cgroup"))
        for h in cg.layout.used():
            if h.version == 2:
                assert groups[""] == want, (tid, groups)
            else:
                for c in h.controllers:
                    assert groups[c] == want, (tid, c, groups)


# -- pure: conversions, validation, layout -------------------------------------------------
def test_weight_maps_like_xl_credit() -> None:
    assert weight_to_shares(256) == 1024
    assert weight_to_shares(1) == 4
    assert weight_to_shares(65535) == 262140
    assert weight_to_cpu_weight(256) == 100
    assert weight_to_cpu_weight(512) == 200
    assert weight_to_cpu_weight(1) == 1  # clamped: 0.39 is below the kernel's minimum
    assert weight_to_cpu_weight(65535) == 10000  # clamped
    # v1 keeps every weight exactly; v2 comes back close.
    assert all(shares_to_weight(weight_to_shares(w)) == w for w in range(1, 65536))
    for w in (1, 3, 100, 256, 1000, 25600):
        assert abs(cpu_weight_to_weight(weight_to_cpu_weight(w)) - w) <= 2


def test_quota_from_cap() -> None:
    assert cgroups.cap_to_quota(0) is None
    assert cgroups.cap_to_quota(20) == 20000
    assert cgroups.cap_to_quota(250) == 250000
    assert cgroups.quota_to_cap(-1, 100000) == 0
    assert cgroups.quota_to_cap(50000, 100000) == 50
    assert cgroups.quota_to_cap(5000, 10000) == 50


# A layout with only a freezer: nothing is read or written before the checks fail.
FREEZER_ONLY = CgroupLayout((Hierarchy(Path("/nonexistent"), 1, frozenset({"freezer"})),))


@pytest.mark.parametrize("weight", [0, 70000, -1, True, 1.5])
def test_weight_out_of_range(weight: int) -> None:
    cg = DomainCgroup("k", name="dom", layout=FREEZER_ONLY)
    with pytest.raises(InvalidConfig) as e:
        cg.set_weight(weight)
    assert e.value.message == (f"Failed to set credit weight of 'dom': {weight} is out of "
                               "range 1..65535")


@pytest.mark.parametrize("cap", [-1, 65536, False])
def test_cap_out_of_range(cap: int) -> None:
    with pytest.raises(InvalidConfig, match=r"^Failed to set credit cap of 'dom': .* out of "
                                            r"range 0\.\.65535"):
        DomainCgroup("k", name="dom", layout=FREEZER_ONLY).set_cap(cap)


def test_missing_controller_is_not_supported() -> None:
    cg = DomainCgroup("k", name="dom", layout=FREEZER_ONLY)
    with pytest.raises(NotSupported) as e:
        cg.set_weight(256)
    assert e.value.message.startswith("Failed to set credit weight of 'dom': the cpu "
                                      "controller is not available in this host's cgroups")
    with pytest.raises(NotSupported, match=r"the memory controller is not available"):
        cg.set_memory_limit(1 << 30)
    with pytest.raises(NotSupported, match=r"the cpu controller"):
        cg.get()
    with pytest.raises(NotSupported):
        DomainCgroup.create("k", layout=CgroupLayout(()))


@pytest.mark.parametrize("key", ["", "../x", "a/b", "tasks", "-x", "a.b", "x" * 129, "a b"])
def test_unsafe_keys(key: str) -> None:
    with pytest.raises(InvalidConfig, match=r"not a safe name"):
        DomainCgroup(key, layout=FREEZER_ONLY)


def test_memory_limit_validation() -> None:
    cg = DomainCgroup("k", layout=FREEZER_ONLY)
    for bad in (0, 100, -1, True):
        with pytest.raises(InvalidConfig, match=r"at least 4096"):
            cg.set_memory_limit(bad)


def _mountinfo(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_detect_pure_v2(tmp_path: Path) -> None:
    mnt = tmp_path / "cg"
    mnt.mkdir()
    (mnt / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    info = _mountinfo(tmp_path, [
        "22 1 0:21 / /proc rw,nosuid - proc proc rw",
        f"31 1 0:26 / {mnt} rw,nosuid,nodev,noexec - cgroup2 cgroup2 rw,nsdelegate",
    ])
    layout = CgroupLayout.detect(info)
    assert layout.unified
    (h,) = layout.used()
    assert h.mount == mnt and h.version == 2
    for c in ("cpu", "memory", "pids", "freezer", "cpuacct"):
        assert layout.hierarchy_for(c) is h
    assert h.enableable >= {"cpu", "memory", "pids"}


def test_detect_hybrid(tmp_path: Path) -> None:
    uni = tmp_path / "uni fied"
    uni.mkdir()
    (uni / "cgroup.controllers").write_text("\n")
    info = _mountinfo(tmp_path, [
        "31 23 0:28 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755",
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
        "33 31 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory",
        "34 31 0:30 / /elsewhere/memory rw - cgroup cgroup rw,memory",  # mounted twice
        "35 31 0:31 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd",
        f"36 31 0:32 / {str(uni).replace(' ', chr(92) + '040')} rw - cgroup2 cgroup2 rw",
    ])
    layout = CgroupLayout.detect(info)
    assert not layout.unified
    cpu = layout.hierarchy_for("cpu")
    assert cpu is not None and cpu is layout.hierarchy_for("cpuacct")
    assert cpu.mount == Path("/sys/fs/cgroup/cpu,cpuacct") and cpu.version == 1
    mem = layout.hierarchy_for("memory")
    assert mem is not None and mem.mount == Path("/sys/fs/cgroup/memory")
    fz = layout.hierarchy_for("freezer")  # no v1 freezer: v2's core one
    assert fz is not None and fz.version == 2 and fz.mount == uni
    assert layout.hierarchy_for("pids") is None
    assert [h.mount for h in layout.used()] == [cpu.mount, mem.mount, uni]


def test_detect_this_host() -> None:
    layout = CgroupLayout.detect()
    assert layout.used()
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        assert layout.unified
    else:
        assert not layout.unified


# -- v2 file formats on a fake tree ----------------------------------------------------------
def test_v2_files_on_fake_tree(tmp_path: Path) -> None:
    mnt = tmp_path / "cg"
    (mnt / "xenia").mkdir(parents=True)
    listed = frozenset({"cpu", "memory", "pids", "io"})
    (mnt / "cgroup.controllers").write_text("cpu memory pids io\n")
    (mnt / "cgroup.subtree_control").write_text("memory\n")  # memory already on
    (mnt / "xenia" / "cgroup.subtree_control").write_text("\n")
    layout = CgroupLayout((Hierarchy(mnt, 2, listed | {"freezer", "cpuacct"}, listed),))
    cg = DomainCgroup.create("u1", name="vm", layout=layout)
    d = mnt / "xenia" / "u1"
    assert d.is_dir() and cg.exists()
    assert (mnt / "cgroup.subtree_control").read_text() == "+cpu +pids"
    assert (mnt / "xenia" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    # What the kernel would show in a new group:
    for name, text in {"cpu.weight": "100\n", "cpu.max": "max 100000\n", "memory.max": "max\n",
                       "memory.current": "4096\n", "cgroup.procs": "",
                       "memory.events": "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n",
                       "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\n"}.items():
        (d / name).write_text(text)
    assert cg.get() == {"weight": 256, "cap": 0}
    cg.set_weight(512)
    assert (d / "cpu.weight").read_text() == "200"
    cg.set_cap(150)
    assert (d / "cpu.max").read_text() == "150000 100000"
    assert cg.get() == {"weight": 512, "cap": 150}
    cg.set_cap(0)
    assert (d / "cpu.max").read_text() == "max 100000"
    cg.set_memory_limit(1 << 30)
    assert (d / "memory.max").read_text() == str(1 << 30)
    assert cg.memory_limit() == 1 << 30
    cg.set_memory_limit(None)
    assert cg.memory_limit() is None
    assert cg.memory_usage() == 4096
    assert cg.oom_kills() == 1
    assert cg.cpu_time() == 2.5
    assert domain_keys(layout=layout) == {"u1"}


# -- real cgroupfs -------------------------------------------------------------------------
@needs_root
def test_attach_moves_every_thread(env: Env) -> None:
    cg = env.group()
    assert cg.exists()
    p = env.spawn(THREADS)
    assert p.stdout is not None and p.stdout.readline() == "ready\n"
    assert len(os.listdir(f"/proc/{p.pid}/task")) == 4
    cg.attach(p.pid)
    _assert_in_group(p.pid, cg)
    assert cg.pids() == {p.pid}
    assert p.stdin is not None
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.stdout.readline() == "more\n"
    assert len(os.listdir(f"/proc/{p.pid}/task")) == 5
    _assert_in_group(p.pid, cg)  # the new thread was born inside
    # This process is not in it.
    assert f"/{env.root}/" not in Path("/proc/self/cgroup").read_text()


@needs_root
def test_attach_errors(env: Env) -> None:
    cg = env.group()
    p = env.spawn(SLEEP)
    p.kill()
    p.wait()
    with pytest.raises(NotFound, match=r"no such process"):
        cg.attach(p.pid)
    with pytest.raises(InvalidConfig, match=r"not a process id"):
        cg.attach(0)
    with pytest.raises(NotFound, match=r"does not exist \(is the cgroup created\?\)"):
        DomainCgroup("never", root=env.root).attach(os.getpid())


@needs_root
def test_weight_and_cap_in_kernel_files(env: Env) -> None:
    cg = env.group()
    assert cg.get() == {"weight": 256, "cap": 0}  # the kernel's defaults are xl's
    cg.set_weight(512)
    cg.set_cap(150)
    d = cg.path("cpu")
    h = cg.layout.hierarchy_for("cpu")
    assert h is not None
    if h.version == 1:
        assert (d / "cpu.shares").read_text() == "2048\n"
        assert (d / "cpu.cfs_period_us").read_text() == "100000\n"
        assert (d / "cpu.cfs_quota_us").read_text() == "150000\n"
    else:
        assert (d / "cpu.weight").read_text() == "200\n"
        assert (d / "cpu.max").read_text() == "150000 100000\n"
    assert cg.get() == {"weight": 512, "cap": 150}
    cg.set_cap(0)
    cg.set_weight(1)
    assert cg.get() == {"weight": 1, "cap": 0}
    if h.version == 1:
        assert (d / "cpu.cfs_quota_us").read_text() == "-1\n"
    cg.set_weight(65535)
    assert cg.get()["weight"] == (65535 if h.version == 1 else 25600)
    with pytest.raises(InvalidConfig, match=r"70000 is out of range 1\.\.65535"):
        cg.set_weight(70000)


@needs_root
def test_cap_is_measurable(env: Env) -> None:
    """A cap of 20% holds a busy process to about a fifth of a CPU; without it, it keeps up
    with an equal process in a sibling group. The CPU the machine has to give is measured
    by that reference, not assumed: other work on it slows both down."""
    cg = env.group()
    p = env.spawn(BUSY)
    cg.attach(p.pid)
    ref = env.spawn(BUSY)
    env.group("ref").attach(ref.pid)
    cg.set_cap(20)
    _wait(lambda: _throttled(cg) > 0, "the cap to hold the process back")
    c0, r0, t0 = _cpu_seconds(p.pid), _cpu_seconds(ref.pid), time.monotonic()
    _wait(lambda: _cpu_seconds(p.pid) - c0 >= 0.4, "0.4 s of CPU under the cap")
    used, wall = _cpu_seconds(p.pid) - c0, time.monotonic() - t0
    available = min(wall, _cpu_seconds(ref.pid) - r0)
    assert used / wall <= 0.35, (used, wall)  # the cap holds, loaded or not
    assert used >= 0.10 * available, (used, available)  # and is not far below 20%
    cg.set_cap(0)
    c0, r0 = _cpu_seconds(p.pid), _cpu_seconds(ref.pid)
    _wait(lambda: _cpu_seconds(ref.pid) - r0 >= 1.0, "1 s of CPU for the reference")
    assert _cpu_seconds(p.pid) - c0 > 0.5 * (_cpu_seconds(ref.pid) - r0)


@needs_root
def test_freeze_and_thaw(env: Env) -> None:
    cg = env.group()
    p = env.spawn(BUSY)
    cg.attach(p.pid)
    assert not cg.frozen()
    cg.freeze()
    assert cg.frozen()
    c0 = _cpu_seconds(p.pid)
    g0 = cg.cpu_time()
    env.cpu_window()
    assert _cpu_seconds(p.pid) == c0
    assert cg.cpu_time() == g0
    assert p.poll() is None
    cg.freeze()  # again: no change, no error
    cg.thaw()
    assert not cg.frozen()
    _wait(lambda: _cpu_seconds(p.pid) - c0 > 0.2 and cg.cpu_time() - g0 > 0.2,
          "the thawed process to run")


@needs_root
def test_memory_limit_oom_kills_inside_only(env: Env) -> None:
    if Path("/proc/swaps").read_text().count("\n") > 1:
        pytest.skip("swap would absorb the allocation instead of the OOM killer")
    cg = env.group()
    assert cg.memory_limit() is None
    cg.set_memory_limit(64 << 20)
    assert cg.memory_limit() == 64 << 20
    p = env.spawn(HOG)
    cg.attach(p.pid)
    assert p.stdin is not None
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.wait(30) == -9
    assert p.stdout is not None and p.stdout.read() == ""
    assert cg.oom_kills() >= 1
    assert cg.memory_usage() <= 64 << 20
    cg.set_memory_limit(None)
    assert cg.memory_limit() is None


@needs_root
def test_remove(env: Env) -> None:
    cg = env.group()
    p = env.spawn(SLEEP)
    cg.attach(p.pid)
    with pytest.raises(InUse, match=rf"process {p.pid} is still in it; stop the domain first"):
        cg.remove(timeout=0.1)
    assert cg.exists()
    # A sub-group (as a container runtime would make) goes too.
    for h in cg.layout.used():
        (h.mount / env.root / cg.key / "sub").mkdir()
    p.kill()  # not reaped yet: a zombie must not keep the group
    cg.remove()
    assert not cg.exists()
    assert not any((h.mount / env.root / cg.key).exists() for h in cg.layout.used())
    cg.remove()  # idempotent
    assert p.wait(5) == -9


@needs_root
def test_remove_frozen_killed_domain(env: Env) -> None:
    cg = env.group()
    p = env.spawn(BUSY)
    cg.attach(p.pid)
    cg.freeze()
    p.kill()
    cg.remove()  # thaws, so that the kill can take effect
    assert not cg.exists()
    assert p.wait(5) == -9


@needs_root
def test_remove_busy_frozen_group_without_wait_keeps_it_frozen(env: Env) -> None:
    cg = env.group()
    p = env.spawn(SLEEP)
    cg.attach(p.pid)
    cg.freeze()
    with pytest.raises(InUse):
        cg.remove(timeout=0)
    assert cg.frozen()


@needs_root
def test_remove_evicts_leftovers(env: Env) -> None:
    cg = env.group()
    p = env.spawn(SLEEP)
    cg.attach(p.pid)
    cg.freeze()
    cg.remove(timeout=0.1, evict=True)
    assert not cg.exists()
    assert p.poll() is None
    assert f"/{env.root}/" not in Path(f"/proc/{p.pid}/cgroup").read_text()
    # Back where this process is, and thawed.
    assert _groups_of(Path(f"/proc/{p.pid}/cgroup")) == _groups_of(Path("/proc/self/cgroup"))
    assert Path(f"/proc/{p.pid}/stat").read_text().rpartition(")")[2].split()[0] == "S"


@needs_root
def test_collect_garbage(env: Env) -> None:
    keep, stale, busy = env.group("keep"), env.group("stale"), env.group("busy")
    p = env.spawn(SLEEP)
    busy.attach(p.pid)
    assert domain_keys(root=env.root) == {"keep", "stale", "busy"}
    result = collect_garbage({"keep", "not-there"}, root=env.root)
    assert result.removed == ["stale"]
    assert result.busy == ["busy"]
    assert keep.exists() and busy.exists() and not stale.exists()
    assert domain_keys(root=env.root) == {"keep", "busy"}


@needs_root
def test_create_is_idempotent(env: Env) -> None:
    cg = env.group()
    cg.set_weight(1000)
    again = DomainCgroup.create(cg.key, root=env.root)
    assert again.get()["weight"] == 1000  # re-adopted, not reset


@needs_root
def test_v2_hierarchy(env: Env, v2_layout: CgroupLayout) -> None:
    """attach, freezer (cgroup.freeze), CPU time (cpu.stat) and removal on the host's v2
    tree; on a hybrid host the CPU controller is missing there, which must say so."""
    cg = env.group("v2", layout=v2_layout)
    p = env.spawn(BUSY)
    cg.attach(p.pid)
    _assert_in_group(p.pid, cg)
    _wait(lambda: cg.cpu_time() > 0, "CPU time in the group")
    cg.freeze()
    assert cg.frozen()
    g0 = cg.cpu_time()
    c0 = _cpu_seconds(p.pid)
    env.cpu_window()
    assert cg.cpu_time() == g0 and _cpu_seconds(p.pid) == c0
    cg.thaw()
    _wait(lambda: cg.cpu_time() - g0 > 0.2, "the thawed group to use CPU")
    if v2_layout.hierarchy_for("cpu") is None:
        with pytest.raises(NotSupported, match=r"the cpu controller is not available"):
            cg.set_weight(256)
    p.kill()
    cg.remove()
    assert not cg.exists()

"""Issue 3: memory, vCPUs, CPU delegation, xenia top, PCI — checked inside real guests."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.integration.harness import Host, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def host(shared_host: Host) -> Host:
    """One xeniad for this module's tests (conftest.py's shared_host)."""
    return shared_host


def mem_total_kb(host: Host, name: str) -> int:
    return int(host.run(name, "grep MemTotal /proc/meminfo").split()[1])


def online(host: Host, name: str) -> str:
    return host.run(name, "cat /sys/devices/system/cpu/online").strip()


def fails(host: Host, args: list[str], match: str) -> None:
    res = host.xenia(*args, check=False)
    assert res.returncode != 0 and match in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_balloon_memory(host: Host) -> None:
    host.create("g1", memory=256, maxmem=512)
    # Started ballooned: the guest sees about 256 of its 512 MiB.
    start = wait_until(lambda: (kb := mem_total_kb(host, "g1")) < 300_000 and kb,
                       what="the balloon to inflate")
    host.xenia("mem-set", "g1", "400m")
    grown = wait_until(lambda: (kb := mem_total_kb(host, "g1")) > start + 100_000 and kb,
                       what="the guest to grow")
    host.xenia("mem-set", "g1", "192")
    wait_until(lambda: mem_total_kb(host, "g1") < grown - 150_000, what="the guest to shrink")
    assert host.domain("g1")["memory"] == 192
    fails(host, ["mem-set", "g1", "600"], "above its maximum of 512 MiB")
    fails(host, ["mem-max", "g1", "1g"], "cannot grow past it")
    host.xenia("mem-max", "g1", "300")
    fails(host, ["mem-set", "g1", "310"], "above its maximum of 300 MiB")
    assert host.domain("g1")["memory"] == 192


def test_vcpu_hotplug_and_list(host: Host) -> None:
    host.create("g1", vcpus=1, maxvcpus=3)
    assert online(host, "g1") == "0"
    host.xenia("vcpu-set", "g1", "3")
    wait_until(lambda: online(host, "g1") == "0-2", what="3 vCPUs online")
    rows = [line.split() for line in host.xenia("vcpu-list", "g1").stdout.splitlines()[1:]]
    assert [r[2] for r in rows] == ["0", "1", "2"]
    host.xenia("vcpu-set", "g1", "2")
    wait_until(lambda: online(host, "g1") == "0-1", what="vCPU 2 gone")
    assert host.run("g1", "ls -d /sys/devices/system/cpu/cpu2 2>/dev/null; echo x").strip() == "x"
    fails(host, ["vcpu-set", "g1", "4"], "it can have 1 to 3 (maxvcpus)")
    assert host.domain("g1")["vcpus"] == 2


def thread_affinity(pid: int) -> dict[str, str]:
    """vCPU thread name -> Cpus_allowed_list, from /proc."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        comm = (task / "comm").read_text().strip()
        if comm.startswith("CPU "):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    out[comm] = line.split(":")[1].strip()
    return out


def test_pinning_cpus_and_vcpu_pin(host: Host) -> None:
    dom = host.create("g1", vcpus=2, cpus="1")
    pid = dom["runtime"]["pid"]
    assert set(thread_affinity(pid).values()) == {"1"}
    host.xenia("vcpu-pin", "g1", "0", "0")
    aff = thread_affinity(pid)
    assert aff["CPU 0/TCG"] == "0" and aff["CPU 1/TCG"] == "1"
    host.xenia("vcpu-pin", "g1", "all", "all")
    assert set(thread_affinity(pid).values()) == {"0-1"}
    assert "all / all" in host.xenia("vcpu-list", "g1").stdout
    fails(host, ["vcpu-pin", "g1", "0", "7"], "CPU 7 does not exist on this host")
    res = host.xenia("create", str(host.write_cfg("g2", cpus="5-6")), check=False)
    assert res.returncode != 0 and "5-6 do not exist on this host" in res.stderr
    assert not host.has_domain("g2")


def test_sched_credit_weight_and_cap(host: Host) -> None:
    dom = host.create("g1", cpu_weight=512, cap=30)
    out = host.xenia("sched-credit", "-d", "g1").stdout.splitlines()[1].split()
    assert out[2:] == ["512", "30"]
    host.xenia("sched-credit", "-d", "g1", "-w", "128")
    assert host.xenia("sched-credit", "-d", "g1").stdout.splitlines()[1].split()[2:] == \
        ["128", "30"]
    # The cap is real: a guest spinning flat out gets about 30% of one host CPU.
    host.run("g1", "(while :; do :; done) >/dev/null 2>&1 &")
    pid = dom["runtime"]["pid"]

    def cpu() -> float:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / 100

    c0, t0 = cpu(), time.monotonic()
    # Until QEMU has used 1.5 s of CPU (the loop runs), then its share of the time that took.
    wait_until(lambda: cpu() - c0 >= 1.5, timeout=60, interval=0.1,
               what="the spinning guest to use CPU")
    share = (cpu() - c0) / (time.monotonic() - t0)
    assert share < 0.45, share
    fails(host, ["sched-credit", "-d", "g1", "-w", "70000"], "out of range")


def test_top_batch_and_json(host: Host) -> None:
    host.create("g1", memory=256)
    text = host.xenia("top", "-b", "-i", "2", "-d", "0.5").stdout
    assert text.count("NAME") == 2 and "g1" in text and "Domain-0" in text
    lines = host.xenia("top", "--json", "-i", "1", "-d", "0.5").stdout.splitlines()
    doc = json.loads(lines[-1])
    g1 = [d for d in doc["domains"] if d["name"] == "g1"][0]
    assert g1["memory_kib"] == 256 * 1024 and g1["type"] == "pv" and "cpu_pct" in g1


def test_pci_list_and_passthrough_errors(host: Host) -> None:
    host.create("g1", vif=[])
    devs = json.loads(host.xenia("pci-list", "--json", "g1").stdout)
    ids = {d["qdev"] for d in devs}
    assert {"balloon0", "rng0dev", "rp0"} <= ids
    if not any(Path("/sys/kernel/iommu_groups").glob("*")):
        fails(host, ["pci-assignable-add", "00:00.0"], "this host has no IOMMU")
        fails(host, ["pci-attach", "g1", "00:00.0"], "this host has no IOMMU")
    fails(host, ["pci-assignable-add", "zz:00.0"], "write it as")
    fails(host, ["pci-detach", "g1", "00:03.0"], "not attached")

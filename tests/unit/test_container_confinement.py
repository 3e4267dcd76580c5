"""Container confinement without a runtime: the seccomp profile's shape, capabilities,
masked paths and user namespace of the OCI spec, the config keys, the host-side network
keys, and the user-id allocator (real SQLite store, fake /etc/subuid and /proc)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from xenia.config.build import build_config
from xenia.config.model import DomainConfig
from xenia.containers import caps, netconf, seccomp, spec
from xenia.containers.confine import Confinement, console_owner
from xenia.containers.idmap import (
    BLOCK,
    IdAllocator,
    IdMap,
    IdRange,
    live_ranges,
    parse_request,
    parse_subids,
)
from xenia.errors import InUse, InvalidConfig, NotSupported
from xenia.store.base import DomainRecord
from xenia.store.sqlite import SqliteStore

UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
BASE = 1 << 30


def cfg(**keys: object) -> DomainConfig:
    values: dict[str, object] = {"name": "ct1", "type": "container"}
    values.update(keys)
    return build_config(values, "<test>")  # type: ignore[arg-type]


def rules_for(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in profile["syscalls"] if name in r["names"]]


def allowed(profile: dict[str, Any]) -> set[str]:
    """Calls allowed without conditions."""
    return {n for r in profile["syscalls"] if r["action"] == "SCMP_ACT_ALLOW"
            and not r.get("args") for n in r["names"]}


# -- seccomp ----------------------------------------------------------------------------------
def test_seccomp_is_an_allow_list_with_docker_shape() -> None:
    p = seccomp.profile(caps.DEFAULT, "x86_64")
    assert p["defaultAction"] == "SCMP_ACT_ERRNO" and p["defaultErrnoRet"] == 1
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    ok = allowed(p)
    assert {"read", "write", "openat", "execve", "mmap", "futex", "wait4", "kill",
            "socketpair", "arch_prctl", "reboot", "chroot", "ptrace"} <= ok
    # Kernel-wide state, new namespaces, mounts, modules, keyrings, BPF, io_uring: never.
    for name in ("mount", "umount2", "unshare", "setns", "pivot_root", "keyctl", "add_key",
                 "bpf", "perf_event_open", "kexec_load", "init_module", "finit_module",
                 "open_by_handle_at", "name_to_handle_at", "userfaultfd", "io_uring_setup",
                 "fsopen", "open_tree", "move_mount", "mount_setattr", "swapon", "syslog",
                 "sethostname", "settimeofday", "clock_settime", "iopl", "acct", "quotactl",
                 "clone", "socket", "personality"):
        assert name not in ok, name
    json.dumps(p)


def test_clone_without_namespaces_and_clone3_as_enosys() -> None:
    p = seccomp.profile(caps.DEFAULT, "x86_64")
    [clone] = rules_for(p, "clone")
    assert clone["args"] == [{"index": 0, "value": 0x7E020000, "valueTwo": 0,
                              "op": "SCMP_CMP_MASKED_EQ"}]
    for flag in (0x10000000, 0x20000, 0x40000000, 0x20000000, 0x02000000):  # NEWUSER ...
        assert clone["args"][0]["value"] & flag
    assert 0x00010000 & clone["args"][0]["value"] == 0  # CLONE_THREAD still fine
    [clone3] = rules_for(p, "clone3")
    assert clone3["action"] == "SCMP_ACT_ERRNO" and clone3["errnoRet"] == 38
    # s390 has clone's flags second.
    [s390] = rules_for(seccomp.profile(caps.DEFAULT, "s390x"), "clone")
    assert s390["args"][0]["index"] == 1


def test_socket_families_and_personality_values() -> None:
    p = seccomp.profile(caps.DEFAULT, "x86_64")
    families = sorted(r["args"][0]["value"] for r in rules_for(p, "socket"))
    assert families == [1, 2, 10, 16, 17]  # UNIX, INET, INET6, NETLINK, PACKET
    assert 40 not in families and 38 not in families  # no vsock, no AF_ALG
    assert all(r["args"][0]["op"] == "SCMP_CMP_EQ" and len(r["args"]) == 1
               for r in rules_for(p, "socket"))
    personas = sorted(r["args"][0]["value"] for r in rules_for(p, "personality"))
    assert personas == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]


def test_capabilities_open_their_calls() -> None:
    admin = seccomp.profile([*caps.DEFAULT, "CAP_SYS_ADMIN"], "x86_64")
    ok = allowed(admin)
    assert {"mount", "umount2", "unshare", "setns", "clone", "clone3", "sethostname"} <= ok
    assert rules_for(admin, "clone3") == [r for r in admin["syscalls"]
                                          if r["action"] == "SCMP_ACT_ALLOW"
                                          and "clone3" in r["names"]]
    assert "io_uring_setup" not in ok  # refused even then
    no_boot = seccomp.profile(caps.effective(drop=["CAP_SYS_BOOT"]), "x86_64")
    assert "reboot" not in allowed(no_boot)
    assert "perf_event_open" in allowed(seccomp.profile(["CAP_PERFMON"], "x86_64"))


def test_per_architecture_calls_and_unknown_architectures() -> None:
    arm = seccomp.profile(caps.DEFAULT, "aarch64")
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert "set_tls" in allowed(arm) and "arch_prctl" not in allowed(arm)
    assert "set_tls" not in allowed(seccomp.profile(caps.DEFAULT, "x86_64"))
    assert seccomp.supported("riscv64") and not seccomp.supported("mips")
    with pytest.raises(KeyError):
        seccomp.profile(caps.DEFAULT, "mips")


# -- capabilities and config keys -------------------------------------------------------------
def test_default_capabilities_are_dockers_without_mknod_and_net_admin() -> None:
    have = set(caps.effective())
    assert "CAP_SYS_BOOT" in have and "CAP_KILL" in have and "CAP_NET_RAW" in have
    assert not have & {"CAP_NET_ADMIN", "CAP_MKNOD", "CAP_SYS_ADMIN", "CAP_SYS_MODULE",
                       "CAP_SYS_PTRACE", "CAP_SYS_RAWIO", "CAP_DAC_READ_SEARCH"}
    assert caps.effective(["CAP_NET_ADMIN"], ["CAP_NET_RAW"]) == [
        c for c in caps.ALL if c in (set(caps.DEFAULT) | {"CAP_NET_ADMIN"}) - {"CAP_NET_RAW"}]
    assert caps.effective(["CAP_KILL"], ["ALL"]) == ["CAP_KILL"]
    assert caps.normalize("net_admin") == caps.normalize(" CAP_NET_ADMIN") == "CAP_NET_ADMIN"
    assert caps.normalize("NET_WIZARD") is None


def test_config_keys_for_containers() -> None:
    c = cfg(cap_add=["net_admin", "CAP_NET_ADMIN", "sys_ptrace"], cap_drop="net_raw",
            pids_limit=64, idmap="1073741824:65536")
    assert c.cap_add == ["CAP_NET_ADMIN", "CAP_SYS_PTRACE"] and c.cap_drop == ["CAP_NET_RAW"]
    assert c.pids_limit == 64 and c.idmap == "1073741824:65536"
    assert cfg(cap_drop=["all"]).cap_drop == ["ALL"]
    assert cfg().pids_limit is None and cfg().cap_add == []
    assert DomainConfig.from_dict(c.to_dict()) == c
    with pytest.raises(InvalidConfig, match="'NET_WIZARD' in 'cap_add' is not a Linux"):
        cfg(cap_add=["NET_WIZARD"])
    with pytest.raises(InvalidConfig, match="'pids_limit' must be from 0"):
        cfg(pids_limit=-1)
    with pytest.raises(InvalidConfig, match="host uid 0 is the host's root"):
        cfg(idmap="0:65536")
    with pytest.raises(InvalidConfig, match="not HOSTID:COUNT"):
        cfg(idmap="lots")
    with pytest.raises(InvalidConfig, match="COUNT must be from 1 to 65536"):
        cfg(idmap="100000:70000")
    with pytest.raises(InvalidConfig, match="'cap_add' is for containers"):
        build_config({"name": "vm", "type": "pvh", "cap_add": ["NET_ADMIN"]}, "<t>")
    with pytest.raises(InvalidConfig, match="'pids_limit' is for containers"):
        build_config({"name": "vm", "type": "hvm", "pids_limit": 5}, "<t>")


def test_parse_request_forms() -> None:
    assert parse_request("5000000:100") == IdMap(5000000, 5000000, 100)
    assert parse_request(" 5000000 : 6000000 : 65536 ") == IdMap(5000000, 6000000, 65536)
    with pytest.raises(ValueError, match="largest id"):
        parse_request(f"{2**32 - 10}:100")
    with pytest.raises(ValueError, match="host gid 0"):
        parse_request("5000000:0:10")


# -- the OCI spec -------------------------------------------------------------------------------
def test_build_spec_confines(tmp_path: Path) -> None:
    idmap = IdMap(BASE, BASE + BLOCK)
    # A host sysfs whose CPUs 0 and 2 have thermal_throttle counters (1 has none).
    cpus = tmp_path / "devices/system/cpu"
    for d in ("cpu0/thermal_throttle", "cpu1", "cpu2/thermal_throttle", "cpufreq"):
        (cpus / d).mkdir(parents=True)
    doc = spec.build_spec(cfg(cap_add=["NET_ADMIN"]), uuid=UUID, rootfs=Path("/r"),
                          argv=["/sbin/init"], idmap=idmap, machine="x86_64", sysfs=tmp_path)
    json.dumps(doc)
    proc, linux = doc["process"], doc["linux"]
    assert proc["noNewPrivileges"] is True and proc["user"] == {"uid": 0, "gid": 0}
    assert set(proc["capabilities"]) == {"bounding", "effective", "permitted"}
    assert proc["capabilities"]["bounding"] == caps.effective(["CAP_NET_ADMIN"])
    assert [n["type"] for n in linux["namespaces"]] == [
        "user", "pid", "network", "ipc", "uts", "mount", "cgroup"]
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": BASE, "size": BLOCK}]
    assert linux["gidMappings"] == [{"containerID": 0, "hostID": BASE + BLOCK, "size": BLOCK}]
    for path in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug",
                 "/sys/firmware", "/sys/devices/virtual/powercap",
                 # Docker's since GHSA-6fw5-f8r9-fgfm: /proc/interrupts, thermal_throttle.
                 "/proc/interrupts", "/sys/devices/system/cpu/cpu0/thermal_throttle",
                 "/sys/devices/system/cpu/cpu2/thermal_throttle"):
        assert path in linux["maskedPaths"], path
    assert not [p for p in linux["maskedPaths"] if p.startswith("/sys/devices/system/cpu/")
                and "thermal_throttle" not in p]
    assert len(set(linux["maskedPaths"])) == len(linux["maskedPaths"]) == 14
    assert {"/proc/sys", "/proc/sysrq-trigger", "/proc/bus", "/proc/irq"} <= set(
        linux["readonlyPaths"])
    assert linux["seccomp"] == seccomp.profile(caps.effective(["CAP_NET_ADMIN"]), "x86_64")
    assert "resources" not in linux and "cgroupsPath" not in linux
    spec.check_mappings(doc, idmap)


def test_mappings_outside_the_containers_ids_are_refused() -> None:
    idmap = IdMap(BASE, BASE, BLOCK)
    doc = spec.build_spec(cfg(), uuid=UUID, rootfs=Path("/r"), argv=["/sbin/init"],
                          idmap=idmap, machine="x86_64")
    with pytest.raises(InvalidConfig, match="outside the container's own"):
        spec.check_mappings(doc, IdMap(BASE + BLOCK, BASE + BLOCK, BLOCK))
    doc["linux"]["uidMappings"].append({"containerID": 70000, "hostID": 0, "size": 1})
    with pytest.raises(InvalidConfig, match="maps host uids 0-0"):
        spec.check_mappings(doc, idmap)
    doc["linux"]["namespaces"].remove({"type": "user"})
    with pytest.raises(InvalidConfig, match="no user namespace"):
        spec.check_mappings(doc, idmap)
    with pytest.raises(NotSupported, match="no seccomp profile for mips"):
        spec.build_spec(cfg(), uuid=UUID, rootfs=Path("/r"), argv=["/sbin/init"],
                        idmap=idmap, machine="mips")


# -- network keys ---------------------------------------------------------------------------------
@pytest.mark.parametrize("line, iface, mode, address, gw", [
    ("xenia.ip=10.1.2.3/24 xenia.gw=10.1.2.1", "eth0", "static", "10.1.2.3/24", "10.1.2.1"),
    ("xenia.ip=10.1.2.3", "eth0", "static", "10.1.2.3/24", None),
    ("xenia.ip=10.1.2.3/16", "eth1", "dhcp", None, None),
    ("xenia.ip.eth1=10.9.0.2/30 xenia.ip=off", "eth1", "static", "10.9.0.2/30", None),
    ("xenia.ip=off", "eth0", "off", None, None),
    ("", "eth0", "dhcp", None, None),
    ("ip=10.0.0.5::10.0.0.1:255.255.255.0:h:eth0:off", "eth0", "static", "10.0.0.5/24",
     "10.0.0.1"),
    ("ip=10.0.0.5::10.0.0.1:255.255.0.0:h:eth1:none", "eth0", "dhcp", None, None),
    ("ip=dhcp", "eth0", "dhcp", None, None),
    ("ip=::::h:eth0:off", "eth0", "off", None, None),
])
def test_nic_config(line: str, iface: str, mode: str, address: str | None,
                    gw: str | None) -> None:
    nic = netconf.nic_config(line, iface)
    assert nic.mode == mode
    assert (str(nic.address) if nic.address else None) == address
    assert (str(nic.gateway) if nic.gateway else None) == gw


def test_nic_commands_and_bad_addresses() -> None:
    nics = [netconf.nic_config("xenia.ip=10.1.2.3/24 xenia.gw=10.1.2.1", "eth0"),
            netconf.nic_config("", "eth1")]
    assert netconf.commands(nics) == [
        ["link", "set", "lo", "up"], ["link", "set", "eth0", "up"],
        ["addr", "add", "10.1.2.3/24", "dev", "eth0"], ["link", "set", "eth1", "up"],
        ["route", "add", "default", "via", "10.1.2.1", "dev", "eth0"]]
    # A gateway outside the interface's subnet gets no route (the init says so).
    far = [netconf.nic_config("xenia.ip=10.1.2.3/24 xenia.gw=10.9.9.9", "eth0")]
    assert not any(c[0] == "route" for c in netconf.commands(far))
    with pytest.raises(ValueError):
        netconf.nic_config("xenia.ip=10.1.2.300/24", "eth0")


# -- user ids -------------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "x.db")


def allocator(store: SqliteStore, tmp_path: Path, lines: str,
              proc: Path | None = None) -> IdAllocator:
    for name in ("subuid", "subgid"):
        (tmp_path / name).write_text(lines)
    if proc is None:
        proc = tmp_path / "proc"
        proc.mkdir(exist_ok=True)
    return IdAllocator(store, subuid=tmp_path / "subuid", subgid=tmp_path / "subgid",
                       proc=proc)


def add_record(store: SqliteStore, uuid: str, name: str) -> None:
    store.put(DomainRecord(uuid=uuid, name=name, domid=store.next_domid(),
                           config=DomainConfig(name=name, type="container")))


def test_parse_subids_and_blocks() -> None:
    text = "alice:100000:65536\nxenia:1073741824:131072\n# x\nxenia:5:bad\nxenia:0:9\n"
    assert parse_subids(text) == [IdRange(1073741824, 131072)]
    assert parse_subids(text, "alice") == [IdRange(100000, 65536)]
    assert list(IdRange(100000, 200000).whole_blocks()) == [2, 3]  # 131072..262143
    assert list(IdRange(100000, 10).blocks()) == [1]
    assert list(IdRange(65535, 2).blocks()) == [0, 1]


def test_allocations_never_overlap_and_are_freed(store: SqliteStore, tmp_path: Path) -> None:
    ids = allocator(store, tmp_path, f"xenia:{BASE}:{3 * BLOCK}\n")
    got = [ids.allocate(f"u{i}", f"ct{i}") for i in range(3)]
    assert [g.uid for g in got] == [BASE, BASE + BLOCK, BASE + 2 * BLOCK]
    assert all(g.gid == g.uid and g.size == BLOCK for g in got)
    with pytest.raises(InUse, match=r"all 3 ranges of 65536 uids that .*subuid gives "
                                    r"'xenia' are in use"):
        ids.allocate("u3", "ct3")
    assert ids.claims("uid") == {BASE // BLOCK: "u0", BASE // BLOCK + 1: "u1",
                                 BASE // BLOCK + 2: "u2"}
    ids.release("u1")
    ids.release("u1")  # idempotent
    assert ids.allocate("u3", "ct3").uid == BASE + BLOCK
    # A failed allocation leaves no half claim behind: here a uid block was free, no gid
    # block was.
    (tmp_path / "subuid").write_text(f"xenia:{BASE}:{4 * BLOCK}\n")
    with pytest.raises(InUse, match="gids"):
        ids.allocate("u4", "ct4")
    assert "u4" not in {*ids.claims("uid").values(), *ids.claims("gid").values()}


def test_garbage_of_gone_domains_is_freed(store: SqliteStore, tmp_path: Path) -> None:
    ids = allocator(store, tmp_path, f"xenia:{BASE}:{2 * BLOCK}\n")
    add_record(store, "u0", "ct0")
    ids.allocate("u0", "ct0")
    ids.allocate("gone", "old")
    assert ids.collect_garbage({r.uuid for r in store.list()}) == ["gone"]
    assert set(ids.claims("uid").values()) == {"u0"}


def test_no_range_for_xenia_says_how_to_add_one(store: SqliteStore, tmp_path: Path) -> None:
    ids = allocator(store, tmp_path, "alice:100000:65536\n")
    with pytest.raises(NotSupported, match="gives 'xenia' no ids.*add a line such as "
                                           "'xenia:1073741824:67108864'"):
        ids.allocate("u0", "ct0")
    ids = allocator(store, tmp_path, f"xenia:{BASE + 1}:{BLOCK}\n")
    with pytest.raises(NotSupported, match="hold no whole block"):
        ids.allocate("u0", "ct0")


def test_live_user_namespaces_are_skipped(store: SqliteStore, tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, uid_map in (("1", "0 0 4294967295\n"), ("42", f"0 {BASE + 100} 1000\n"),
                         ("self", "x")):
        (proc / pid).mkdir(parents=True)
        (proc / pid / "uid_map").write_text(uid_map)
        (proc / pid / "gid_map").write_text("0 0 4294967295\n")
    assert live_ranges("uid", proc) == [IdRange(BASE + 100, 1000)]
    ids = allocator(store, tmp_path, f"xenia:{BASE}:{2 * BLOCK}\n", proc)
    got = ids.allocate("u0", "ct0")
    assert got.uid == BASE + BLOCK and got.gid == BASE  # uids: block 0 is some process's


def test_requested_ranges(store: SqliteStore, tmp_path: Path) -> None:
    ids = allocator(store, tmp_path, f"xenia:{BASE}:{4 * BLOCK}\n")
    add_record(store, "u0", "ct0")
    assert ids.allocate("u0", "ct0", IdMap(BASE + 10, BASE + 10, 100)) == IdMap(
        BASE + 10, BASE + 10, 100)
    # Its block is taken whole: another request in it and the next auto one avoid it.
    with pytest.raises(InUse, match="share ids with domain 'ct0'"):
        ids.allocate("u1", "ct1", IdMap(BASE + 1000, BASE + 1000, 10))
    assert ids.allocate("u1", "ct1").uid == BASE + BLOCK
    with pytest.raises(InvalidConfig, match=r"idmap asks for host uids 100000-165535, "
                                            r"which lie outside the ranges"):
        ids.allocate("u2", "ct2", IdMap(100000, BASE, BLOCK))
    with pytest.raises(InvalidConfig, match="gids"):
        ids.allocate("u2", "ct2", IdMap(BASE + 2 * BLOCK, 100000, BLOCK))
    assert "u2" not in ids.claims("uid").values()  # the uid claim was given back
    # A range crossing blocks claims each of them.
    ids.allocate("u3", "ct3", IdMap(BASE + 2 * BLOCK + 5, BASE + 2 * BLOCK + 5, BLOCK))
    assert [b for b, u in ids.claims("uid").items() if u == "u3"] == [
        BASE // BLOCK + 2, BASE // BLOCK + 3]


def test_hold_claims_again_or_refuses(store: SqliteStore, tmp_path: Path) -> None:
    ids = allocator(store, tmp_path, f"xenia:{BASE}:{2 * BLOCK}\n")
    add_record(store, "u0", "ct0")
    got = ids.allocate("u0", "ct0")
    ids.hold("u0", "ct0", got)
    # Released (a restart after the domain's host side was cleaned up): claimed again.
    ids.release("u0")
    ids.hold("u0", "ct0", got)
    assert set(ids.claims("uid").values()) == {"u0"} == set(ids.claims("gid").values())
    # Taken by another domain meanwhile: refused, naming it.
    ids.release("u0")
    add_record(store, "u1", "ct1")
    assert ids.allocate("u1", "ct1") == got
    with pytest.raises(InUse, match="held by domain 'ct1'"):
        ids.hold("u0", "ct0", got)
    # The pool shrank under it.
    (tmp_path / "subgid").write_text(f"xenia:{BASE + BLOCK}:{BLOCK}\n")
    with pytest.raises(InvalidConfig, match="gids .* are no longer inside"):
        ids.hold("u1", "ct1", got)


@pytest.mark.skipif(os.geteuid() != 0, reason="reads other processes' uid_map")
def test_live_ranges_of_this_host_do_not_include_the_host() -> None:
    assert all(r.start > 0 or r.count < 2**32 - 1 for r in live_ranges("uid"))


def test_confinement_gives_a_domain_its_ids_for_life(store: SqliteStore, tmp_path: Path) -> None:
    ids = allocator(store, tmp_path, f"xenia:{BASE}:{3 * BLOCK}\n")
    conf = Confinement(store, ids=ids)
    ids.allocate("stale", "gone")  # a claim whose domain vanished without a release
    rec = DomainRecord(uuid="u0", name="ct0", domid=1, config=cfg(name="ct0"))
    got = conf.allocate(rec)  # prepare: frees the stale claim first, so gets block 0
    assert got == IdMap(BASE, BASE)
    assert rec.runtime["ids"] == rec.runtime["userns"] == got.to_dict()
    assert conf.allocate(rec) == got  # once
    store.put(rec)
    assert console_owner(rec) == f"{BASE}:{BASE + 5}"
    conf.release(rec)
    assert ids.claims("uid") == {}
    assert conf.idmap(rec, tmp_path / "no-upper") == got  # a boot after a release holds
    # them again
    assert set(ids.claims("uid").values()) == {"u0"}
    asked = DomainRecord(uuid="u1", name="ct1", domid=2,
                         config=cfg(name="ct1", idmap=f"{BASE + 2 * BLOCK}:3"))
    assert conf.allocate(asked) == IdMap(BASE + 2 * BLOCK, BASE + 2 * BLOCK, 3)
    assert console_owner(asked) == f"{BASE + 2 * BLOCK}:{BASE + 2 * BLOCK}"  # no gid 5


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
@pytest.mark.parametrize("before", [None, {"uid": 100000, "gid": 100000, "size": 65536}],
                         ids=["host-ids", "rootfs-owner"])
def test_a_domain_of_an_older_xenia_gets_ids_and_its_files(
        store: SqliteStore, tmp_path: Path, before: dict[str, int] | None) -> None:
    ids = allocator(store, tmp_path, f"xenia:{BASE}:{BLOCK}\n")
    conf = Confinement(store, ids=ids)
    rec = DomainRecord(uuid="u0", name="ct0", domid=1, config=cfg(name="ct0"),
                       runtime={"userns": before})  # as an older xeniad left it
    store.put(rec)
    old = before["uid"] if before else 0
    upper = tmp_path / "upper"
    (upper / "root").mkdir(parents=True)
    (upper / "root" / "f").write_text("x")
    (upper / "stranger").write_text("y")
    for path, owner in ((upper, old), (upper / "root", old), (upper / "root" / "f", old + 7),
                        (upper / "stranger", old + 70000)):
        os.chown(path, owner, owner)
    assert conf.idmap(rec, upper) == IdMap(BASE, BASE)
    assert rec.runtime["ids"] == rec.runtime["userns"] == IdMap(BASE, BASE).to_dict()
    assert (upper.stat().st_uid, (upper / "root" / "f").stat().st_gid) == (BASE, BASE + 7)
    assert (upper / "stranger").stat().st_uid == BASE + 65534  # outside: nobody
    conf.idmap(rec, upper)  # the next boot changes nothing
    assert (upper / "root" / "f").stat().st_uid == BASE + 7


def test_check_refuses_bad_addresses_and_warns_of_dhcp(
        store: SqliteStore, caplog: pytest.LogCaptureFixture) -> None:
    conf = Confinement(store)

    def rec(**keys: object) -> DomainRecord:
        return DomainRecord(uuid=UUID, name="ct1", domid=1, config=cfg(**keys))

    with pytest.raises(InvalidConfig, match="the address of eth0 in extra/cmdline"):
        conf.check(rec(vif=["bridge=xenbr0"], extra="xenia.ip=10.0.0.300/24"))
    caplog.set_level("WARNING", logger="xenia.containers.confine")
    conf.check(rec(vif=["bridge=xenbr0"], extra="xenia.ip=10.0.0.3/24"))
    assert not caplog.records
    conf.check(rec(vif=["bridge=xenbr0", "bridge=xenbr0"], extra="xenia.ip=10.0.0.3/24"))
    assert "eth1 gets no address: DHCP runs inside the container" in caplog.text
    caplog.clear()
    conf.check(rec(vif=["bridge=xenbr0"], cap_add=["NET_ADMIN"]))
    assert not caplog.records

"""Driver domains without QEMU: config, checks, link numbers, NBD JSON, the fence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from xenia.config.build import build_config
from xenia.config.diskspec import parse_disk_spec
from xenia.config.model import DomainConfig, VifSpec
from xenia.config.xlcfg import parse_config
from xenia.devices import disk as diskdev
from xenia.drivers.qemu_drvdom import DriverLinks, export_of
from xenia.errors import InvalidConfig, NotFound
from xenia.images import driver
from xenia.network import drvlink
from xenia.store.base import DomainRecord
from xenia.store.sqlite import SqliteStore


def record(name: str, uuid: str, state: str = "running", **cfg: Any) -> DomainRecord:
    return DomainRecord(uuid=uuid, name=name, domid=int(uuid[1:]),
                        config=DomainConfig(name=name, **cfg),
                        state=state)  # type: ignore[arg-type]


@pytest.fixture
def links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DriverLinks:
    monkeypatch.setattr(drvlink, "present_links", lambda: {0})  # a bridge left on the host
    return DriverLinks(SqliteStore(tmp_path / "x.db"), None)


def test_xl_cfg_keys_are_parsed() -> None:
    text = ('name = "dd"\ndriver_domain = 1\nkernel = "/k"\n'
            "disk = ['format=raw,vdev=xvda,backend=dd2,target=/dev/vdb']\n"
            "vif = ['backend=dd2']\n")
    cfg = build_config(parse_config(text, "t.cfg"), "t.cfg")
    assert cfg.driver_domain is True
    assert cfg.disks[0].backend == "dd2" and cfg.disks[0].target == "/dev/vdb"
    assert diskdev.is_remote(cfg.disks[0]) and not diskdev.has_host_file(cfg.disks[0])
    assert cfg.vifs[0].backend == "dd2"
    local = parse_disk_spec("format=raw,vdev=xvda,backend=Domain-0,target=/x")
    assert not diskdev.is_remote(local) and diskdev.has_host_file(local)


def test_export_names_and_ports() -> None:
    spec = parse_disk_spec("format=raw,vdev=xvda,backend=dd,target=/dev/vdc")
    assert export_of(spec, "fe") == ("vdc", 10811)
    bad = parse_disk_spec("format=raw,vdev=xvda,backend=dd,target=/etc/passwd")
    with pytest.raises(InvalidConfig, match="not a disk of driver domain 'dd'"):
        export_of(bad, "fe")


def test_nbd_blockdev_json_has_reconnect_and_no_spliced_strings() -> None:
    spec = parse_disk_spec("format=raw,vdev=xvdb,backend=dd,target=/dev/vda")
    plan = diskdev.plan(spec, None, "pv", "rp0", None,
                        diskdev.nbd_blockdevs(spec, "169.254.3.2", 10809, "vda"))
    nbd, raw = plan.blockdevs
    assert nbd["driver"] == "nbd" and nbd["export"] == "vda"
    assert nbd["server"] == {"type": "inet", "host": "169.254.3.2", "port": "10809"}
    assert nbd["reconnect-delay"] == diskdev.NBD_RECONNECT_DELAY
    assert raw == {"driver": "raw", "node-name": "drive-xvdb", "file": "file-xvdb",
                   "read-only": False}
    assert plan.device["drive"] == "drive-xvdb"


def test_driver_domain_gets_a_link_and_two_nics(links: DriverLinks) -> None:
    dd = record("dd", "u1", driver_domain=True)
    links.prepare(dd)
    links.prepare(dd)  # once only
    assert links.number("dd") == 1  # 0's bridges are on the host already
    assert [v.bridge for v in dd.config.vifs] == ["xdds1", "xddn1"]
    assert links.kernel_params(dd) == ["xenia.ip.eth0=169.254.1.2/30", "xenia.ip.eth1=off",
                                       "xenia.nbd=169.254.1.2"]


def test_front_end_needs_a_running_driver_domain(links: DriverLinks) -> None:
    fe = record("fe", "u2", disks=[parse_disk_spec(
        "format=raw,vdev=xvda,backend=dd,target=/dev/vda")])
    with pytest.raises(NotFound, match="backend domain 'dd' does not exist"):
        links.check(fe)
    plain = record("dd", "u1")
    links.store.put(plain)
    with pytest.raises(InvalidConfig, match="not a driver domain"):
        links.check(fe)
    dd = record("dd", "u1", driver_domain=True)
    links.prepare(dd)
    links.store.put(dd)
    links.check(fe)
    assert links.remote_disks(fe) == {"xvda": {"host": "169.254.1.2", "port": 10809,
                                               "export": "vda"}}
    qcow = record("fe", "u2", disks=[parse_disk_spec(
        "format=qcow2,vdev=xvda,backend=dd,target=/dev/vda")])
    with pytest.raises(InvalidConfig, match="raw disk"):
        links.check(qcow)
    self_backed = record("dd", "u1", driver_domain=True, disks=[parse_disk_spec(
        "format=raw,vdev=xvdb,backend=dd,target=/dev/vda")])
    with pytest.raises(InvalidConfig, match="its own backend"):
        links.check(self_backed)


def test_links_stay_while_a_front_end_uses_them(links: DriverLinks,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    torn: list[int] = []
    fences: list[list[str] | None] = []
    monkeypatch.setattr(drvlink, "tear_down", torn.append)
    monkeypatch.setattr(drvlink, "fence", lambda nft, down: fences.append(down))
    dd = record("dd", "u1", driver_domain=True)
    links.prepare(dd)
    links.store.put(dd)
    fe = record("fe", "u2", vifs=[VifSpec(backend="dd")])
    links.store.put(fe)
    links.collect(dd)  # the driver domain dies: its front end still needs the link
    assert torn == [] and fences[-1] == ["169.254.1.2"]
    links.store.delete(dd.uuid)
    links.collect(fe)  # the last user goes: the bridges and the fence go
    assert torn == [1] and fences[-1] is None
    assert links.number("dd") is None


def test_fence_ruleset_resets_connections_to_down_links() -> None:
    rules = [c["add"]["rule"] for c in drvlink.ruleset(["169.254.4.2"])["nftables"]
             if "rule" in c.get("add", {})]
    output = [r for r in rules if r["chain"] == "output"]
    assert len(output) == 1
    assert output[0]["expr"][-1] == {"reject": {"type": "tcp reset"}}
    assert {"drop": None} in rules[1]["expr"]  # input from xdd* is dropped
    assert [r for r in drvlink.ruleset([])["nftables"]
            if r.get("add", {}).get("rule", {}).get("chain") == "output"] == []


def test_ldd_output_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    class Done:
        stdout = ("\tlinux-vdso.so.1 (0x00007fff)\n"
                  "\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007fb4)\n"
                  "\t/lib64/ld-linux-x86-64.so.2 (0x00007fb5)\n")

    monkeypatch.setattr(driver, "find_tool", lambda *a: "/usr/bin/ldd")
    monkeypatch.setattr(driver, "run_tool", lambda *a, **k: Done())
    assert driver.shared_libraries(Path("/usr/bin/qemu-nbd")) == [
        Path("/lib/x86_64-linux-gnu/libz.so.1"), Path("/lib64/ld-linux-x86-64.so.2")]

"""Snapshot references, clone identities (MAC, the console line) without a guest."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from xenia.config.model import DomainConfig, VifSpec
from xenia.errors import InvalidConfig
from xenia.migration import savefile
from xenia.migration.clones import Clones, identity_line, new_mac
from xenia.migration.snapshots import MEMORY_FILE, split_ref
from xenia.store.base import DomainRecord


def test_split_ref() -> None:
    assert split_ref("tmpl@base", "x") == ("tmpl", "base")
    assert split_ref("tmpl/base", "x") == ("tmpl", "base")
    for bad in ("tmpl", "@base", "tmpl@", ""):
        with pytest.raises(InvalidConfig, match="DOMAIN@SNAPSHOT"):
            split_ref(bad, "x")


def test_new_macs_are_xen_unicast_and_differ() -> None:
    macs = {new_mac() for _ in range(200)}
    assert len(macs) == 200
    for mac in macs:
        assert re.fullmatch(r"00:16:3e:[0-7][0-9a-f](:[0-9a-f]{2}){2}", mac), mac


def test_identity_line_sets_name_uuid_macs_and_ends_in_a_marker() -> None:
    cfg = DomainConfig(name="c7", vifs=[VifSpec(mac="00:16:3e:01:02:03"),
                                        VifSpec(mac="00:16:3e:04:05:06")])
    rec = DomainRecord(uuid="1b4e28ba-2fa1-11d2-883f-0016d3cca427", name="c7", domid=3,
                       config=cfg)
    line = identity_line(rec, "tok")
    assert line.endswith("echo tok-$((40+2))\n") and line.count("\n") == 1
    assert "echo c7 >/proc/sys/kernel/hostname;" in line
    assert f"echo {rec.uuid} >/run/xenia/uuid" in line
    assert "ip link set dev eth1 address 00:16:3e:04:05:06" in line
    # The answer the caller waits for is not in the echoed input.
    assert "tok-42" not in line


# -- a clone starts only from the memory file xeniad wrote ---------------------------------
UUID = "6b1f6c57-0000-4000-8000-000000000001"
STREAM = b"QEVM" + bytes(500)


def snap_record(**runtime: Any) -> dict[str, Any]:
    cfg = DomainConfig.from_dict({"name": "tmpl", "type": "pv", "kernel": "/k",
                                  "disks": [{"target": "/var/lib/xenia/tmpl.img",
                                             "vdev": "xvda", "format": "raw"}]})
    rec = DomainRecord(uuid=UUID, name="tmpl", domid=3, config=cfg, state="running")
    rec.runtime = {"machine": "pc-q35-10.0", "root_ports": 2, **runtime}
    return rec.to_dict()


def memory_file(path: Path, rec: dict[str, Any]) -> savefile.SaveHeader:
    """A complete save file, as xeniad writes one (or as a QEMU that kept a writable fd
    could write one afresh, trailer and all: the checksum is no secret)."""
    path.unlink(missing_ok=True)
    header = savefile.begin(path, {"record": rec, "snapshot": "base"})
    with open(path, "ab") as f:
        f.write(STREAM)
    savefile.finish(path, header)
    return header


class NoBuild:
    """A manager whose build must never be reached."""

    def __init__(self, state: Path) -> None:
        self.paths = SimpleNamespace(state=state)
        self.store = SimpleNamespace(list=lambda: [])
        self.built: list[Any] = []

    def driver_for(self, cfg: Any) -> None:
        return None

    async def build(self, rec: Any, **kw: Any) -> Any:
        self.built.append(rec)
        raise AssertionError("a clone was started")


class OneSnapshot:
    def __init__(self, directory: Path, doc: dict[str, Any]) -> None:
        self.dir, self.doc = directory, doc

    def get(self, dom: str, snap: str, doing: str) -> dict[str, Any]:
        return self.doc

    def directory(self, dom: str, snap: str) -> Path:
        return self.dir


def forged(tmp_path: Path, written: dict[str, Any], on_disk: dict[str, Any]
           ) -> tuple[Clones, NoBuild]:
    """A snapshot whose record pins the header of `written`; the file holds `on_disk`."""
    sdir = tmp_path / "snap"
    sdir.mkdir()
    pin = memory_file(sdir / MEMORY_FILE, written).sha256
    memory_file(sdir / MEMORY_FILE, on_disk)
    doc = {"domain": "tmpl", "name": "base", "memory": True, "disks": {},
           "memory_header_sha256": pin}
    m = NoBuild(tmp_path / "state")
    return Clones(m, OneSnapshot(sdir, doc)), m  # type: ignore[arg-type]


def with_disk(target: str) -> dict[str, Any]:
    rec = snap_record()
    rec["config"]["disks"][0]["target"] = target
    return rec


@pytest.mark.parametrize("on_disk", [
    with_disk("/root/.ssh/authorized_keys"),
    snap_record(qemu_args="-sandbox off"),
], ids=["disk path", "runtime key"])
def test_a_clone_refuses_a_changed_header(tmp_path: Path, on_disk: dict[str, Any]) -> None:
    clones, m = forged(tmp_path, snap_record(), on_disk)
    for start in (clones.start("tmpl@base", "c1"), clones.stage("tmpl@base", "c1")):
        with pytest.raises(InvalidConfig, match="header of .* is not the one recorded"):
            asyncio.run(start)  # type: ignore[arg-type]
    assert m.built == [] and not (tmp_path / "state").exists()


def test_a_clone_runs_the_checks_a_restore_runs(tmp_path: Path) -> None:
    # A header that matches its pin still passes check_arriving and the checksum.
    bad = snap_record(qemu_args="-sandbox off")
    clones, m = forged(tmp_path, bad, bad)
    with pytest.raises(InvalidConfig, match="runtime keys this host does not accept: "
                                            "qemu_args"):
        asyncio.run(clones.start("tmpl@base", "c1"))
    good = snap_record()
    path = tmp_path / "snap" / MEMORY_FILE
    clones.snapshots.doc["memory_header_sha256"] = memory_file(  # type: ignore[attr-defined]
        path, good).sha256
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # in the stream
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidConfig, match="checksum mismatch"):
        asyncio.run(clones.start("tmpl@base", "c1"))
    # Checked once per file: a clone that passed, then the file written again.
    memory_file(path, good)
    with pytest.raises(AssertionError, match="a clone was started"):
        asyncio.run(clones.start("tmpl@base", "c1"))
    with open(path, "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\xff")
    with pytest.raises(InvalidConfig, match="checksum mismatch"):
        asyncio.run(clones.start("tmpl@base", "c1"))
    m.built.clear()
    # A snapshot an older Xenia took has no pin: its file may be QEMU's work.
    memory_file(path, good)
    clones.snapshots.doc.pop("memory_header_sha256")  # type: ignore[attr-defined]
    with pytest.raises(InvalidConfig, match="no hash of its memory file's header"):
        asyncio.run(clones.stage("tmpl@base", "c1"))
    assert m.built == [] and not list((tmp_path / "state").glob("clones/*"))

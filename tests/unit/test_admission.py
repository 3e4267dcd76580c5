"""Issue 10 §3: what a host accepts of a domain record it did not make (an incoming
migration's, a save file's): migration/admission.py, the Receiver, SaveRestore."""

from __future__ import annotations

import asyncio
import copy
import os
from pathlib import Path
from typing import Any

import pytest

from xenia.config.model import DomainConfig
from xenia.drivers import qemu_migrate
from xenia.drivers.base import IncomingSetup
from xenia.errors import InvalidConfig
from xenia.migration import admission, savefile
from xenia.migration.receiver import Incoming, Receiver
from xenia.migration.saving import SaveRestore
from xenia.migration.sender import ip_of
from xenia.qemu.commands import Qmp
from xenia.store.base import DomainRecord

UUID = "6b1f6c57-0000-4000-8000-000000000001"
JOB = "0e8c7a52-35a4-4c8e-9a53-2f4d1b1f7a10"


def machines() -> set[str]:
    return {"pc-q35-10.0", "q35"}


def record(**runtime: Any) -> dict[str, Any]:
    cfg = DomainConfig.from_dict({"name": "web", "type": "pv", "kernel": "/k"})
    rec = DomainRecord(uuid=UUID, name="web", domid=3, config=cfg, state="running")
    rec.runtime = {"machine": "pc-q35-10.0", "root_ports": 9, "boot_maxmem": 256,
                   "slots": {"disk-xvda": "rp0", "net0": "rp1"}, "pins": {"0": "0-1"}}
    rec.runtime.update(runtime)
    return rec.to_dict()


def check(data: Any) -> None:
    admission.check_arriving(data, "to accept the domain", machines)


def test_a_portable_record_passes() -> None:
    check(record())


def test_an_old_record_is_upgraded_before_it_is_checked() -> None:
    # Schema 1 (no "schema" key): root_ports was "nports"; a save file of that release.
    old = record()
    del old["schema"]
    old["runtime"]["nports"] = old["runtime"].pop("root_ports")
    check(old)
    old["runtime"]["nports"] = "many"  # and the upgraded value is checked as any other
    with pytest.raises(InvalidConfig, match="runtime root_ports must be a number"):
        check(old)


@pytest.mark.parametrize("bad, match", [
    ({"uuid": "../../../etc"}, "not a UUID"),
    ({"uuid": UUID.upper()}, "canonical"),
    ({"uuid": 5}, "not a UUID"),
    ({"name": "other"}, "name and its config's differ"),
])
def test_bad_identity_refused(bad: dict[str, Any], match: str) -> None:
    data = record()
    data.update(bad)
    with pytest.raises(InvalidConfig, match=match):
        check(data)


def test_bad_name_refused_as_create_would() -> None:
    data = record()
    data["name"] = data["config"]["name"] = "../evil"
    with pytest.raises(InvalidConfig, match="Failed to use domain name '../evil'"):
        check(data)


def test_config_uuid_must_match() -> None:
    data = record()
    data["config"]["uuid"] = "0e8c7a52-35a4-4c8e-9a53-2f4d1b1f7a11"
    with pytest.raises(InvalidConfig, match="uuid and its config's differ"):
        check(data)


@pytest.mark.parametrize("runtime, match", [
    ({"pid": 1}, "runtime keys this host does not accept: pid"),
    ({"taps": {"0": "eth0"}}, "does not accept: taps"),
    ({"machine": "q35,accel=kvm"}, "machine 'q35,accel=kvm' is not a machine type"),
    ({"machine": ["q35"]}, "is not a machine type"),
    ({"root_ports": 10_000}, "root_ports must be"),
    ({"root_ports": True}, "root_ports must be"),
    ({"slots": {"disk-xvda": "rp0,addr=3"}}, "slots must map"),
    ({"slots": {"x,y": "rp0"}}, "slots must map"),
    ({"boot_maxmem": "256"}, "boot_maxmem must be"),
    ({"pins": {"0": "0;rm -rf"}}, "pins must map"),
])
def test_runtime_allow_list(runtime: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidConfig, match=match):
        check(record(**runtime))


def test_unknown_config_key_refused() -> None:
    data = record()
    data["config"]["qemu_extra_args"] = ["-drive", "file=/etc/shadow"]
    with pytest.raises(InvalidConfig, match="config carries keys this host does not know: "
                                            "qemu_extra_args"):
        check(data)


# -- the Receiver's prepare (what /migrations/incoming calls) ----------------------------
def prepare(req: dict[str, Any], allow_plain: bool = False) -> None:
    r = Receiver(manager=None, network=None)  # type: ignore[arg-type]
    r.allow_plain = allow_plain
    asyncio.run(r.prepare(req))


def base_req(**kw: Any) -> dict[str, Any]:
    req = {"id": JOB, "record": record(), "listen_host": "127.0.0.1",
           "psk": {"identity": "xenia-mig-1", "key": "00" * 32}}
    req.update(kw)
    return req


@pytest.mark.parametrize("job_id", ["../../x", "j1", "", None, JOB + "/.."])
def test_prepare_refuses_an_id_that_is_not_a_uuid(job_id: Any) -> None:
    with pytest.raises(InvalidConfig, match="the migration id .* is not a UUID"):
        prepare(base_req(id=job_id))


def test_prepare_refuses_a_plain_stream_unless_allowed() -> None:
    with pytest.raises(InvalidConfig, match="requires an encrypted stream.*"
                                            "--allow-plain-migration"):
        prepare(base_req(psk=None))


def test_prepare_refuses_copy_storage_without_tls_even_if_plain_allowed() -> None:
    with pytest.raises(InvalidConfig, match="NBD export would take writes from anyone"):
        prepare(base_req(psk=None, copy_storage=True), allow_plain=True)


def test_prepare_refuses_a_crafted_record_before_anything_is_made(tmp_path: Path) -> None:
    bad = record(qemu_args="-sandbox off")
    with pytest.raises(InvalidConfig, match="runtime keys this host does not accept"):
        prepare(base_req(record=bad))


@pytest.mark.parametrize("field, match", [
    ({"caps": {"x-ignore-shared": True}}, "caps 'x-ignore-shared' is not one this host"),
    ({"caps": {"postcopy-ram": "on"}}, "caps postcopy-ram must be true or false"),
    ({"caps": ["postcopy-ram"]}, "caps is not a mapping"),
    ({"listen_host": "127.0.0.1,to=9"}, "listen_host '127.0.0.1,to=9' is not an IP"),
    ({"listen_host": "localhost"}, "listen_host 'localhost' is not an IP"),
    ({"listen_host": "0.0.0.0"}, "is not an IP address of this host"),
    ({"listen_host": 5}, "listen_host '5' is not an IP"),
    ({"listen_host": "192.0.2.77"}, "listen_host '192.0.2.77' is not an address of this"),
])
def test_prepare_checks_what_reaches_qemu(field: dict[str, Any], match: str) -> None:
    # Refused before anything is made (the manager is None: any use of it would fail).
    with pytest.raises(InvalidConfig, match=match):
        prepare(base_req(**field))


def test_disk_sizes_are_bounded(tmp_path: Path) -> None:
    disks = [("xvda", tmp_path / "a.img"), ("xvdb", tmp_path / "b.img")]
    ok = admission.check_disk_sizes({"xvda": 1 << 20, "xvdb": 4096}, disks)
    assert ok == {"xvda": 1 << 20, "xvdb": 4096}
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    for sizes, match in [
        ({"xvda": free // 2 + 1, "xvdb": free // 2 + 1}, "need .* bytes in .*only .* free"),
        ({"xvda": 1 << 60, "xvdb": 1}, "not a size in bytes"),
        ({"xvda": -1, "xvdb": 1}, "not a size in bytes"),
        ({"xvda": True, "xvdb": 1}, "not a size in bytes"),
        ({"xvda": "10G", "xvdb": 1}, "not a size in bytes"),
        ({"xvda": 1}, "disk xvdb: disk_sizes gives 'None'"),
        ({"xvda": 1, "xvdb": 1, "../x": 1}, "names disks the domain does not copy"),
    ]:
        with pytest.raises(InvalidConfig, match=match):
            admission.check_disk_sizes(sizes, disks)


def test_an_incoming_disk_is_made_exclusively(tmp_path: Path) -> None:
    """A file that appeared at a disk's path after preflight is neither written over nor
    removed when the migration is undone."""
    victim = tmp_path / "d.img"
    victim.write_text("someone's disk")
    cfg = DomainConfig.from_dict({"name": "web", "type": "pv", "kernel": "/k", "disks": [
        {"target": str(tmp_path / "new.img"), "vdev": "xvda", "format": "raw"},
        {"target": str(victim), "vdev": "xvdb", "format": "raw"}]})
    r = Receiver(manager=None, network=None)  # type: ignore[arg-type]
    job = Incoming(JOB, UUID, "web")
    with pytest.raises(InvalidConfig, match=f"disk xvdb: {victim} exists here already"):
        r._create_disks(cfg, job, {"xvda": 1 << 20, "xvdb": 1 << 20})
    assert job.created_disks == [tmp_path / "new.img"]
    r._cleanup(job)
    assert victim.read_text() == "someone's disk" and not (tmp_path / "new.img").exists()


# -- restore from a crafted save file ------------------------------------------------------
def save_file(path: Path, rec: dict[str, Any]) -> Path:
    header = savefile.begin(path, {"record": rec})
    with open(path, "ab") as f:
        f.write(b"QEVM" + bytes(100))
    savefile.finish(path, header)
    return path


def test_restore_refuses_a_crafted_record(tmp_path: Path) -> None:
    data = record()
    data["uuid"] = "../../run/xenia"
    path = save_file(tmp_path / "x.save", data)
    saves = SaveRestore(manager=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidConfig, match=f"Failed to restore from {path}: the domain's "
                                            "uuid .* is not a UUID"):
        asyncio.run(saves.restore(str(path)))
    good = copy.deepcopy(record(extra_key=1))
    path2 = save_file(tmp_path / "y.save", good)
    with pytest.raises(InvalidConfig, match="does not accept: extra_key"):
        asyncio.run(saves.restore(str(path2)))


# -- the save file: never through a planted link ---------------------------------------
def test_save_file_not_written_through_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "planted"
    link.symlink_to(victim)
    with pytest.raises(InvalidConfig, match="something appeared at that name"):
        savefile.begin(link, {"record": {}})
    assert victim.read_text() == "precious"
    assert os.path.islink(link)


def test_partial_names_are_unpredictable(tmp_path: Path) -> None:
    target = tmp_path / "dom.save"
    names = {savefile.partial_name(target).name for _ in range(50)}
    assert len(names) == 50
    assert all(n.startswith(".dom.save.partial-") for n in names)


def test_publish_renames_into_place(tmp_path: Path) -> None:
    tmp = tmp_path / ".a.partial-x"
    tmp.write_text("data")
    savefile.publish(tmp, tmp_path / "a.save")
    assert (tmp_path / "a.save").read_text() == "data" and not tmp.exists()


def test_the_sender_names_an_ip_to_listen_on() -> None:
    assert ip_of("127.0.0.1") == "127.0.0.1" and ip_of("::1") == "::1"
    assert ip_of("localhost") in ("127.0.0.1", "::1")
    admission.check_listen_host(ip_of("localhost"))  # what the receiver accepts


def test_the_listener_address_reaches_qemu_in_json() -> None:
    """migrate-incoming gets the host as a JSON field (no URI to splice into, no brackets
    for IPv6), and only the capabilities that passed check_caps."""
    sent: list[tuple[str, Any]] = []

    class Chan:
        async def command(self, cmd: str, args: dict[str, Any] | None = None,
                          timeout: float = 30.0) -> Any:
            sent.append((cmd, args))
            if cmd == "query-migrate":
                return {"socket-address": [{"port": "4711"}]}

        def send_fd(self, fd: int) -> None:
            raise AssertionError("no fd here")

    setup = IncomingSetup(name="m1", listen_host="::1",
                          caps=admission.check_caps({"postcopy-ram": True}))
    port, nbd = asyncio.run(qemu_migrate.accept(Qmp(Chan()), setup))
    assert (port, nbd) == (4711, 0)
    assert ("migrate-incoming", {"channels": [{"channel-type": "main", "addr": {
        "transport": "socket", "type": "inet", "host": "::1", "port": "0"}}]}) in sent
    assert ("migrate-set-capabilities", {"capabilities": [
        {"capability": "postcopy-ram", "state": True}]}) in sent

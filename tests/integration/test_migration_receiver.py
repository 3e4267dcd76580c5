"""Issue 10 §3: a real xeniad on TCP (TLS + a `migrate` token, as a peer calls it)
refuses crafted incoming migrations before it makes anything: a record with runtime keys
it does not accept, a machine its QEMU does not know, a uuid or migration id that is a
path, a stream without TLS, a kernel or disk outside --allow-path, device_model_args
without the admin scope, capabilities or a listen address it does not accept. No guest
boots here."""

from __future__ import annotations

import json
import socket
import uuid as uuidlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.harness import Host, Image
from xenia.errors import XeniaError
from xenia.peers.client import PeerClient

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def peer(tiny_image: Image) -> Iterator[tuple[Host, PeerClient]]:
    h = Host(tiny_image)
    port = free_port()
    try:
        h.start_daemon(20.0, "--listen", f"127.0.0.1:{port}", "--allow-path",
                       str(tiny_image.kernel.parent))
        fingerprint = json.loads(h.xenia("host", "info", "--json").stdout)["fingerprint"]
        token = h.xenia("host", "token", "create", "--name", "src", "--scope",
                        "migrate").stdout.strip()
        yield h, PeerClient(f"127.0.0.1:{port}", token, fingerprint, name="h")
    finally:
        h.cleanup()


def incoming(tiny_image: Image, runtime: dict[str, Any] | None = None,
             **over: Any) -> dict[str, Any]:
    uuid = str(uuidlib.uuid4())
    cfg = {"name": "mig-1", "type": "pv", "kernel": str(tiny_image.kernel),
           "ramdisk": str(tiny_image.initrd), "memory": 256}
    req: dict[str, Any] = {
        "id": str(uuidlib.uuid4()), "listen_host": "127.0.0.1",
        "record": {"uuid": uuid, "name": "mig-1", "domid": 4, "config": cfg,
                   "state": "running", "runtime": runtime or {}},
        "psk": {"identity": "xenia-mig-x", "key": "ab" * 32},
    }
    req.update(over)
    return req


@pytest.mark.parametrize("case, match", [
    ("runtime", "runtime keys this host does not accept: qemu_args"),
    ("machine", "machine 'q35,accel=kvm' is not a machine type"),
    ("uuid", "the domain's uuid '../../../etc' is not a UUID"),
    ("job", "the migration id '../../../tmp/x' is not a UUID"),
    ("plain", "requires an encrypted stream"),
    # The path rule over TCP, and the admin-only field, as `create` applies them.
    ("kernel", "Failed to use the kernel '/etc/passwd': over TCP, paths must lie inside"),
    ("disk", "Failed to use the disk xvda '/root/mig.img': over TCP, paths must lie"),
    ("dm_args", "device_model_args pass arguments to QEMU unchecked and need a token with "
                "the 'admin' scope"),
    # What reaches QEMU besides the record.
    ("caps", "caps 'x-ignore-shared' is not one this host sets"),
    ("listen", "listen_host '127.0.0.1,to=99' is not an IP address of this host"),
])
def test_crafted_incoming_migration_refused(peer: tuple[Host, PeerClient],
                                            tiny_image: Image, case: str, match: str) -> None:
    host, client = peer
    req = incoming(tiny_image)
    if case == "runtime":
        req["record"]["runtime"] = {"qemu_args": ["-sandbox", "off"]}
    elif case == "machine":
        req["record"]["runtime"] = {"machine": "q35,accel=kvm"}
    elif case == "uuid":
        req["record"]["uuid"] = "../../../etc"
    elif case == "job":
        req["id"] = "../../../tmp/x"
    elif case == "plain":
        req["psk"] = None
    elif case == "kernel":
        req["record"]["config"]["kernel"] = "/etc/passwd"
    elif case == "disk":
        req["record"]["config"]["disks"] = [{"target": "/root/mig.img", "vdev": "xvda",
                                             "format": "raw"}]
    elif case == "dm_args":
        req["record"]["config"]["device_model_args"] = ["-chardev", "file,path=/etc/x"]
    elif case == "caps":
        req["caps"] = {"x-ignore-shared": True}
    elif case == "listen":
        req["listen_host"] = "127.0.0.1,to=99"
    with pytest.raises(XeniaError) as info:
        client.post("/v1/migrations/incoming", req)
    assert match in info.value.message
    assert not host.has_domain("mig-1")
    assert not list((host.root / "run").glob("migrations/*"))
    assert not list((host.root / "run" / "domains").glob("*"))

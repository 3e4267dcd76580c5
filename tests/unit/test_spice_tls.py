"""spicetls_port (SPICE over TLS with xeniad's certificate directory) and
spiceusbredirection (usb-redir channels): checks, QEMU arguments, the confined QEMU's
files (devices/spice.py, qemu/cmdline.py, drivers/qemu_confine.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_platform_keys import argv, build, devices
from xenia.devices import spice
from xenia.devices.layout import Layout
from xenia.errors import InvalidConfig, NotFound

HVM = 'type = "hvm"\nspice = 1\nspicedisable_ticketing = 1\n'


def certs(tmp_path: Path, skip: str = "") -> Path:
    d = tmp_path / "spice tls,x"
    d.mkdir()
    for name in spice.TLS_FILES:
        if name != skip:
            (d / name).write_text("pem")
    return d


def test_tls_port_needs_every_certificate_file(tmp_path: Path) -> None:
    cfg = build(HVM + "spicetls_port = 5931")
    with pytest.raises(NotFound, match="has no ca-cert.pem, server-cert.pem, server-key.pem"):
        spice.check_spice(cfg, tmp_path / "none")
    with pytest.raises(NotFound, match="has no server-key.pem;.*--spice-tls-dir"):
        spice.check_spice(cfg, certs(tmp_path, skip="server-key.pem"))


def test_tls_port_alone_or_with_the_plain_port(tmp_path: Path) -> None:
    d = certs(tmp_path)
    cfg = build(HVM + "spicetls_port = 5931")
    spice.check_spice(cfg, d)
    args = spice.spice_argv(cfg, str(d))
    # No plain port; the directory's comma escaped, not an option of its own.
    assert args[1] == f"tls-port=5931,x509-dir={tmp_path}/spice tls,,x,addr=127.0.0.1," \
                      "disable-ticketing=on"
    both = build(HVM + "spiceport = 5930\nspicetls_port = 5931")
    spice.check_spice(both, d)
    assert spice.spice_argv(both, str(d))[1].startswith("port=5930,tls-port=5931,")
    with pytest.raises(InvalidConfig, match="must differ"):
        spice.check_spice(build(HVM + "spiceport = 5930\nspicetls_port = 5930"), d)


def test_confined_qemu_reads_the_certificates(tmp_path: Path) -> None:
    from xenia.drivers.qemu_confine import QemuConfinement
    from xenia.paths import Paths
    from xenia.store.base import DomainRecord

    d = certs(tmp_path)
    rec = DomainRecord(uuid="u", name="g", domid=1, config=build(HVM + "spicetls_port = 1"))
    conf = QemuConfinement(Paths(state=tmp_path / "state", run=tmp_path / "run"))
    assert not set(spice.tls_files(str(d))) & set(conf.given_files(rec, None)[1])
    rec.runtime[spice.RUNTIME_TLS_DIR] = str(d)
    _, read = conf.given_files(rec, None)
    assert {str(d / f) for f in spice.TLS_FILES} <= set(read)


def test_usbredirection_channels_on_their_own_controller() -> None:
    cfg = build(HVM + "spiceport = 5930\nspiceusbredirection = 2")
    spice.check_spice(cfg)
    layout = Layout(1)
    layout.take(spice.USBREDIR_CTRL)
    args = spice.usbredir_args(cfg, layout.slots)
    devs = [json.loads(args[i + 1]) for i, a in enumerate(args) if a == "-device"]
    assert devs[0] == {"driver": "qemu-xhci", "id": "usbredir-ctrl", "p2": 2, "p3": 2,
                       "bus": "rp0"}
    assert devs[1:] == [{"driver": "usb-redir", "id": f"usbredir{i}",
                         "chardev": f"usbredirchardev{i}", "bus": "usbredir-ctrl.0",
                         "port": str(i + 1)}
                        for i in range(2)]
    assert [args[i + 1] for i, a in enumerate(args) if a == "-chardev"] == [
        "spicevmc,id=usbredirchardev0,name=usbredir",
        "spicevmc,id=usbredirchardev1,name=usbredir"]
    # In the full argv after the root port the controller sits on.
    ids = [d.get("id") for d in devices(argv(cfg))]
    assert ids.index("usbredir-ctrl") > ids.index(next(i for i in ids if str(i)[:2] == "rp"))
    assert spice.usbredir_args(build(HVM + "spiceport = 5930"), {}) == []
    with pytest.raises(InvalidConfig, match="at most 15"):
        spice.check_spice(build(HVM + "spiceport = 5930\nspiceusbredirection = 16"))

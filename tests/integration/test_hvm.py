"""Issue 5: HVM domains boot unmodified disk images through the firmware; and all three
kinds of domain side by side."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import zlib
from pathlib import Path

import pytest

from tests.integration.conftest import CACHE
from tests.integration.harness import READY, Host, write_xl_cfg

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def hvm_images() -> dict[str, Path]:
    from xenia.images.hvm import build_hvm_images

    return build_hvm_images(CACHE / "images", cache_dir=CACHE / "debs",
                            progress=lambda s: None)


def hvm(host: Host, name: str, **keys: object) -> dict[str, object]:
    cfg = {"type": "hvm", "memory": 256, "vcpus": 1, "kernel": None, "ramdisk": None,
           "extra": None}
    cfg.update(keys)
    path = write_xl_cfg(host.cfgdir / f"{name}.cfg", {"name": name, **cfg})
    host.xenia("create", str(path))
    host.wait_console(name, READY, timeout=180)
    return host.domain(name)


def png_pixels(data: bytes) -> tuple[int, int, set[bytes]]:
    """Width, height and the distinct pixels of an 8-bit RGB(A) PNG (enough to tell a
    blank screen from a written one)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, bpp = 8, b"", 0, 0, 3
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8
            bpp = {2: 3, 6: 4}[color]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = width * bpp + 1
    pixels: set[bytes] = set()
    for y in range(0, height, 4):  # filter byte first; non-None filters still differ
        row = raw[y * stride + 1:(y + 1) * stride]
        pixels.update(row[x:x + bpp] for x in range(0, len(row), bpp * 8))
    return width, height, pixels


def rfb_security(port: int) -> list[int]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        version = s.recv(12)
        assert version.startswith(b"RFB 003.")
        s.sendall(b"RFB 003.008\n")
        n = s.recv(1)[0]
        return list(s.recv(n))


def test_bios_disk_boots_with_vnc_and_screenshot(host: Host, hvm_images: dict[str, Path],
                                                 tmp_path: Path) -> None:
    disk = tmp_path / "bios.img"
    shutil.copyfile(hvm_images["bios-disk"], disk)
    dom = hvm(host, "h1", disk=[f"{disk},raw,hda,rw"], vnc=True, vncpasswd="s3cret",
              usbdevice=["tablet"])
    assert host.run("h1", "uname -r").strip().endswith("cloud-amd64")
    # Booted through the firmware, not by QEMU's direct kernel loader.
    assert "SeaBIOS" in host.console_log("h1") or "SYSLINUX" in host.console_log("h1")
    port = int(str(dom["runtime"]["vnc"]).rsplit(":", 1)[1])
    assert rfb_security(port) == [2]  # VNC authentication only: the password is enforced
    out = host.root / "screen.png"
    host.xenia("screenshot", "h1", str(out))
    width, height, pixels = png_pixels(out.read_bytes())
    assert width >= 640 and height >= 400
    assert len(pixels) > 1, "the screenshot is blank"
    devs = json.loads(host.xenia("pci-list", "--json", "h1").stdout)
    assert {"video0", "usb0"} <= {d["qdev"] for d in devs}


def test_cdrom_boot_order(host: Host, hvm_images: dict[str, Path], tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(16 * 1024 * 1024))
    hvm(host, "cd", boot="d",
        disk=[f"{blank},raw,hda,rw", f"{hvm_images['iso']},raw,hdc:cdrom,r"])
    assert host.run("cd", "echo from-iso").strip() == "from-iso"
    assert "ISOLINUX" in host.console_log("cd") or "isolinux" in host.console_log("cd").lower()


def test_uefi_boot_keeps_its_own_nvram(host: Host, hvm_images: dict[str, Path],
                                       tmp_path: Path) -> None:
    disk = tmp_path / "uefi.img"
    shutil.copyfile(hvm_images["uefi-disk"], disk)
    dom = hvm(host, "u1", firmware="uefi", disk=[f"{disk},raw,hda,rw"])
    nvram = host.root / "state" / "nvram" / f"{dom['uuid']}_VARS.fd"
    assert nvram.stat().st_size > 0
    assert host.run("u1", "ls /sys/firmware/efi >/dev/null && echo efi").strip() == "efi"
    host.xenia("destroy", "u1")
    assert not nvram.exists()


def test_hvm_bad_input(host: Host, hvm_images: dict[str, Path]) -> None:
    def fails(match: str, **keys: object) -> None:
        path = host.cfgdir / "bad.cfg"
        lines = ['name = "bad"', 'type = "hvm"']
        for k, v in keys.items():
            lines.append(f"{k} = {json.dumps(v) if not isinstance(v, int) else v}")
        path.write_text("\n".join(lines) + "\n")
        res = host.xenia("create", str(path), check=False)
        assert res.returncode != 0 and match in res.stderr, res.stderr
        assert not host.has_domain("bad")

    fails("needs something to boot")
    fails("needs something to boot", disk=[",,hdc:cdrom,r"])
    fails("unknown firmware 'coreboot'", firmware="coreboot",
          disk=[f"{hvm_images['iso']},raw,hdc:cdrom,r"])
    fails("sdl=1 needs a local display", sdl=1, disk=[f"{hvm_images['iso']},raw,hdc:cdrom,r"])
    fails("is not an IP address", vnc=1, vnclisten="example.com",
          disk=[f"{hvm_images['iso']},raw,hdc:cdrom,r"])


def test_three_kinds_side_by_side(host: Host, hvm_images: dict[str, Path],
                                  tmp_path: Path) -> None:
    from xenia.images.rootfs import build_rootfs

    rootfs = build_rootfs(CACHE / "images", cache_dir=CACHE / "debs",
                          progress=lambda s: None).path
    host.create("pv1")
    disk = tmp_path / "b.img"
    shutil.copyfile(hvm_images["bios-disk"], disk)
    hvm(host, "hvm1", disk=[f"{disk},raw,hda,rw"])
    ct = host.cfgdir / "ct1.cfg"
    ct.write_text(f'name = "ct1"\ntype = "container"\nrootfs = "{rootfs}"\nmemory = 64\n')
    host.xenia("create", str(ct))
    host.wait_console("ct1", "xenia-rootfs: ready")
    rows = {line.split()[0]: line.split() for line in
            host.xenia("list", "-v").stdout.splitlines()[1:]}
    assert rows["pv1"][-1] == "pv" and rows["hvm1"][-1] == "hvm" and rows["ct1"][-1] == \
        "container"
    top = host.xenia("top", "-b", "-i", "1", "-d", "0.5").stdout
    types = {line.split()[0]: line.split()[-1] for line in top.splitlines()[1:] if line.strip()}
    assert types["pv1"] == "pv" and types["hvm1"] == "hvm" and types["ct1"] == "container"

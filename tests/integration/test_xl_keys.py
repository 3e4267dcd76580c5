"""Issue 14: xl's platform keys, seen from inside one real guest (shared by the module).

The guest is an hvm domain (so the VGA card is there too) that pygrub boots from the
GRUB menu on its own disk. Its config is a Xen admin's: `root=/dev/xvda1 console=hvc0`, a second
serial port to a file, a virtio-serial channel, an RTC an hour ahead, SMBIOS strings, no
S3, device_model_args, and on_watchdog with the watchdog the guest arms itself.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Host, Image, wait_until
from xenia.images import fstools

pytestmark = pytest.mark.integration

CHANNEL = "org.xenia.test.0"
OUT_CHANNEL = "org.xenia.test.1"  # its socket outside the run dir, bound by xeniad
DISK_MIB = 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SPICE_PORT = _free_port()
# Arms the i6300esb from the guest's shell (the cloud kernel has no driver for it):
# memory decoding on, then both stages' preload (2000 ticks of 32768 x 30 ns: ~2 s each)
# after the unlock sequence 0x80, 0x86 on the reload register, then enable (0x68 bit 1).
ARM_WATCHDOG = """
d=$(grep -l 0x25ab /sys/bus/pci/devices/*/device | head -1); d=${d%/device}
printf '\\002\\000' | dd of=$d/config bs=1 seek=4 count=2 conv=notrunc 2>/dev/null
bar=$(head -1 $d/resource | cut -d' ' -f1)
for reg in 0 4; do
  devmem $((bar + 12)) 16 0x80; devmem $((bar + 12)) 16 0x86
  devmem $((bar + reg)) 32 2000
done
printf '\\002' | dd of=$d/config bs=1 seek=104 count=1 conv=notrunc 2>/dev/null
echo armed
""".strip()


def boot_disk(root: Path, image: Image) -> Path:
    """A Xen guest's disk for pygrub: an MBR, a FAT /boot partition with GRUB's menu
    naming the tiny image's kernel and initrd (the second entry is the default)."""
    disk, scratch = root / "d0.img", root / "scratch"
    scratch.mkdir()
    part = fstools.mbr_disk(disk, DISK_MIB << 20, disk_signature=0x58656E, boot_code=b"",
                            scratch=scratch)
    fstools.make_fat(disk, part, label="BOOT", volume_id=0x58656E, scratch=scratch)
    menu = scratch / "grub.cfg"
    menu.write_text("set default=1\n"
                    "menuentry 'wrong' {\n linux /boot/none\n}\n"
                    "menuentry 'tiny' {\n linux /boot/vmlinuz xenia.pygrub=1\n"
                    " initrd /boot/initrd.img\n}\n")
    fstools.fat_put(disk, {"boot/vmlinuz": image.kernel, "boot/initrd.img": image.initrd,
                           "boot/grub/grub.cfg": menu}, scratch=scratch, offset=part.offset)
    return disk


def xk_keys(root: Path, disk_path: Path, serial_log: Path, **more: object
            ) -> dict[str, object]:
    keys: dict[str, object] = dict(
        kernel=None, ramdisk=None, bootloader="pygrub",
        type="hvm", extra="root=/dev/xvda1 console=hvc0",
        disk=[f"{disk_path},raw,xvda,rw"], rtc_timeoffset=3600, acpi_s3=0, stdvga=0,
        smbios=["system_manufacturer=XeniaTest", "system_product_name=xk"],
        device_model_args=["-smbios", "type=1,version=dm-args-ok"],
        # ttyS1's file and a channel's socket outside the run dir (the test's root,
        # 0700): the jailed QEMU cannot open them, xeniad passes it the fds.
        serial=["pty", f"file:{serial_log}"],
        channel=[f"name={CHANNEL},connection=pty",
                 f"name={OUT_CHANNEL},connection=socket,path={root / 'out-ch.sock'}"],
        on_watchdog="preserve", vtpm=[""],
        spice=1, spiceport=SPICE_PORT, spicedisable_ticketing=1, spicevdagent=1)
    keys.update(more)
    return keys


@pytest.fixture(scope="module")
def xk(request: pytest.FixtureRequest, tiny_image: Image) -> Iterator[tuple[Host, Path]]:
    h = Host(tiny_image)
    failed_before = request.session.testsfailed
    ok = False
    try:
        h.start_daemon()
        disk = boot_disk(h.root, tiny_image)
        serial_log = h.root / "serial1.log"
        cfg = h.write_cfg("xk", **xk_keys(h.root, disk, serial_log))
        res = h.xenia("create", str(cfg))
        assert "notice: Xen device names translated" in res.stderr
        assert "console=hvc0 -> console=ttyS0" in res.stderr
        h.wait_console("xk", "xenia-tiny: ready")
        yield h, serial_log
        ok = request.session.testsfailed == failed_before
    finally:
        if not ok:
            h.dump_logs()
        h.cleanup()


def test_pygrub_and_xen_device_names(xk: tuple[Host, Path]) -> None:
    host, _ = xk
    # pygrub booted the default entry of the disk's menu (its argument is on the line);
    # the console answering at all is console=hvc0 translated; root= names the disk.
    words = host.run("xk", "cat /proc/cmdline").split()
    assert "xenia.pygrub=1" in words
    assert "root=/dev/vda1" in words and "console=ttyS0" in words and "console=hvc0" not in words
    assert host.run("xk", "cat /sys/block/vda/size").strip() == str(DISK_MIB << 11)
    assert host.domain("xk")["runtime"]["bootloader_entry"] == "tiny"


def test_rtc_offset_smbios_acpi_vga(xk: tuple[Host, Path]) -> None:
    host, _ = xk
    out = host.run("xk", "cat /sys/class/rtc/rtc0/since_epoch /sys/class/dmi/id/sys_vendor "
                         "/sys/class/dmi/id/product_name /sys/class/dmi/id/product_version; "
                         "dmesg | grep 'ACPI: PM: (supports'; cat /sys/bus/pci/devices/*/vendor"
                   ).splitlines()
    assert abs(int(out[0]) - time.time() - 3600) < 60, out[0]
    assert out[1:4] == ["XeniaTest", "xk", "dm-args-ok"]
    assert "S4" in out[4] and "S3" not in out[4], out[4]
    assert "0x1013" in out[5:]  # stdvga = 0: the Cirrus card


def test_vtpm_answers(xk: tuple[Host, Path]) -> None:
    host, _ = xk
    out = host.run("xk", "cat /sys/class/tpm/tpm0/tpm_version_major "
                         "/sys/class/tpm/tpm0/pcr-sha256/0").split()
    # A PCR read is a TPM2_PCR_Read command answered by the host's swtpm.
    assert out[0] == "2" and len(out[1]) == 64 and int(out[1], 16) >= 0, out
    listing = host.xenia("vtpm-list", "xk").stdout
    assert "vtpm0" in listing and "swtpm" in listing


def test_spice_server_answers_and_vdagent_port_exists(xk: tuple[Host, Path]) -> None:
    host, _ = xk
    # A SPICE link request for the main channel; the server answers with its own "REDQ"
    # link header (the protocol's magic) whatever it thinks of the request.
    mess = struct.pack("<IBBIII", 0, 1, 0, 0, 0, 18)
    with socket.create_connection(("127.0.0.1", SPICE_PORT), timeout=30) as s:
        s.sendall(struct.pack("<4sIII", b"REDQ", 2, 2, len(mess)) + mess)
        assert s.recv(4) == b"REDQ"
    names = host.run("xk", "cat /sys/class/virtio-ports/*/name")
    assert "com.redhat.spice.0" in names


def test_second_serial_port_writes_to_its_file(xk: tuple[Host, Path]) -> None:
    host, serial_log = xk
    host.run("xk", "echo serial-one-$((6*7)) > /dev/ttyS1")
    wait_until(lambda: "serial-one-42" in serial_log.read_text(errors="replace"),
               what="the guest's ttyS1 line in the serial file")
    assert serial_log.stat().st_uid == 0  # QEMU had an fd, never the file itself


@pytest.mark.parametrize("name", [CHANNEL, OUT_CHANNEL])
def test_channel_carries_bytes_both_ways(xk: tuple[Host, Path], name: str) -> None:
    host, _ = xk
    path = (host.root / "out-ch.sock" if name == OUT_CHANNEL
            else next((host.root / "run").rglob("channel0.sock")))
    port = host.run("xk", f"grep -l {name} /sys/class/virtio-ports/*/name").strip()
    dev = "/dev/" + port.split("/")[-2]
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.settimeout(30)
        # Host to guest: QEMU holds the bytes until the guest opens the port.
        s.sendall(b"to-guest\n")
        assert host.run("xk", f"head -n1 {dev}").strip() == "to-guest"
        host.run("xk", f"echo from-guest > {dev}")
        got = b""
        while b"from-guest\n" not in got:
            got += s.recv(100)


def test_trigger_nmi_sysrq_monitor_dmesg(xk: tuple[Host, Path]) -> None:
    host, _ = xk
    host.xenia("trigger", "xk", "nmi")
    wait_until(lambda: "NMI received" in host.run("xk", "dmesg | grep NMI || true"),
               what="the guest's kernel to log the NMI")
    host.run("xk", "echo 1 > /proc/sys/kernel/sysrq")
    host.xenia("sysrq", "xk", "h")
    wait_until(lambda: "sysrq: HELP" in host.run("xk", "dmesg | grep -i sysrq || true"),
               what="the guest's kernel to answer Alt+SysRq+H")
    res = host.xenia("trigger", "xk", "init", check=False)
    assert res.returncode != 0 and "use `trigger reset`" in res.stderr
    assert host.xenia("qemu-monitor-command", "xk", "info name").stdout.strip() == "xk"
    assert "xeniad listening on" in host.xenia("dmesg").stdout
    info = dict(line.split(":", 1) for line in host.xenia("info").stdout.splitlines())
    info = {k.strip(): v.strip() for k, v in info.items()}
    assert int(info["nr_nodes"]) >= 1 and int(info["threads_per_core"]) >= 1
    listing = json.loads(host.xenia("list", "-l").stdout)
    assert listing[0]["name"] == "Domain-0" and listing[0]["domid"] == 0
    assert host.xenia("list", "-n").stdout.splitlines()[0].endswith("NODE Affinity")
    # dump-core: an ELF core of the running guest, which runs on; written outside the
    # run dir (the test's root, 0700) through the fd xeniad passed the jailed QEMU.
    core = host.root / "xk.core"
    assert host.xenia("dump-core", "xk", str(core)).stdout.strip() == str(core)
    with core.open("rb") as f:
        assert f.read(4) == b"\x7fELF"
    assert core.stat().st_uid == 0 and core.stat().st_mode & 0o777 == 0o600
    res = host.xenia("dump-core", "xk", str(core), check=False)  # never replaced
    assert res.returncode != 0 and "does not exist yet" in res.stderr
    core.unlink()
    assert host.domain("xk")["state"] == "running"
    # -N: a dry run changes nothing.
    res = host.xenia("-N", "pause", "xk")
    assert "dry run: would POST" in res.stderr and host.domain("xk")["state"] == "running"
    assert CHANNEL in host.xenia("channel-list", "xk").stdout
    host.xenia("sched-credit2", "-d", "xk", "-w", "512")
    assert host.xenia("sched-credit2", "-d", "xk").stdout.split()[-1] == "512"
    # xl's abbreviations; Domain-0 cannot be destroyed.
    assert host.xenia("li").stdout.splitlines()[0].startswith("Name")
    res = host.xenia("destroy", "-f", "Domain-0", check=False)
    assert res.returncode != 0 and "it is the host itself" in res.stderr


def test_cpupool_pins_a_domain_to_its_cpus(xk: tuple[Host, Path]) -> None:
    host, _ = xk
    host.xenia("cpupool-create", "name=xkpool", "cpus=1")
    host.xenia("cpupool-migrate", "xk", "xkpool")
    rows = [r.split() for r in host.xenia("vcpu-list", "xk").stdout.splitlines()[1:]]
    assert rows and all(r[-3] == "1" for r in rows), rows  # hard affinity: CPU 1
    listing = host.xenia("cpupool-list").stdout
    assert "xkpool" in listing and "Pool-0" in listing
    res = host.xenia("cpupool-destroy", "xkpool", check=False)
    assert res.returncode != 0 and "domains are in it" in res.stderr
    host.xenia("cpupool-migrate", "xk", "Pool-0")
    host.xenia("cpupool-destroy", "xkpool")


def test_config_update_applies_at_the_next_reboot(xk: tuple[Host, Path]) -> None:
    host, serial_log = xk
    cfg = host.write_cfg("xk", **xk_keys(host.root, host.root / "d0.img", serial_log,
                                         memory=320))
    host.xenia("config-update", "xk", str(cfg))
    assert host.domain("xk")["memory"] == 256  # not before the reboot
    bad = host.write_cfg("xk", **xk_keys(host.root, host.root / "d0.img", serial_log,
                                         disk=[]))
    res = host.xenia("config-update", "xk", str(bad), check=False)
    assert res.returncode != 0 and "block-/network-/pci-attach" in res.stderr
    resets = tpm_reset_count(host, "xk")
    host.xenia("trigger", "xk", "reset")  # a reboot: on_reboot=restart with the new config
    wait_until(lambda: host.domain("xk")["memory"] == 320, timeout=60,
               what="the updated config to take effect")
    host.wait_console("xk", "xenia-tiny: ready")
    kib = int(host.run("xk", "grep MemTotal /proc/meminfo").split()[1])
    assert 260_000 < kib <= 320 * 1024, kib
    # A new QEMU, the same domain: its vTPM's state is kept (a wiped one would be a new,
    # unprovisioned TPM whose resetCount starts again), so the count went on.
    assert tpm_reset_count(host, "xk") > resets


def tpm_reset_count(host: Host, name: str) -> int:
    """The vTPM's resetCount (TPM2_ReadClock, sent raw to /dev/tpm0 from inside the
    guest): it lives in the TPM's NV state and grows by one at each TPM reset."""
    # One write() of the whole command (the driver takes no partial ones): dd, not printf.
    out = host.run(name, "printf '\\200\\001\\000\\000\\000\\012\\000\\000\\001\\201' "
                         ">/tmp/readclock; exec 3<>/dev/tpm0; "
                         "dd if=/tmp/readclock bs=10 count=1 >&3 2>/dev/null; "
                         "dd bs=64 count=1 <&3 2>/dev/null | od -An -tx1 -v; exec 3<&-")
    data = bytes.fromhex("".join(out.split()))
    assert len(data) >= 35 and data[6:10] == b"\0\0\0\0", data.hex()  # TPM_RC_SUCCESS
    return int.from_bytes(data[26:30], "big")


def test_watchdog_fires_and_on_watchdog_acts(xk: tuple[Host, Path]) -> None:
    # Last: the guest stops for good.
    host, _ = xk
    assert host.run("xk", ARM_WATCHDOG).strip().endswith("armed")
    wait_until(lambda: host.domain("xk")["state"] == "shutdown", timeout=60,
               what="on_watchdog=preserve to keep the stopped guest")
    assert "guest watchdog, applying preserve" in host.daemon_log.read_text()

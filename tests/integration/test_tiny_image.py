"""The tiny guest image: build it (once a session), check the cache, boot it with bare QEMU.

Everything the guest contract in xenia/images/tiny.py promises that other tests rely on is
checked here: the ready line, the shell on ttyS0, modules, static and DHCP network config,
vCPU hotplug onlining, ACPI power-off. QEMU runs under TCG with user networking only.
The downloaded .debs are cached in /var/tmp/xenia-test-cache/debs (XENIA_TEST_CACHE
overrides the first part), the image itself is built afresh in a temporary directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.bare_qemu import QEMU, BareGuest, bare_guests
from xenia.errors import BackendError
from xenia.images import ImageInfo, build_tiny, find_image, list_images
from xenia.images.tiny import BOOT_MODULES

pytestmark = pytest.mark.integration

# The .deb download cache, shared with conftest.py's tiny_image fixture.
CACHE = Path(os.environ.get("XENIA_TEST_CACHE", "/var/tmp/xenia-test-cache")) / "debs"
READY_TIMEOUT = 60.0  # seconds; ~3 s normally, but TCG on a loaded 2-core host is slow


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="session")
def tiny(images_dir: Path) -> ImageInfo:
    lines: list[str] = []
    info = build_tiny(images_dir, cache_dir=CACHE, progress=lines.append)
    print("\n".join(lines))
    return info


@pytest.fixture
def boot(tiny: ImageInfo) -> Iterator[Any]:
    """boot(append="", args=[...]) -> a running Guest; every QEMU is killed at the end."""
    with bare_guests("xenia-tiny-", READY_TIMEOUT) as start:

        def boot_one(append: str = "", args: list[str] | None = None) -> BareGuest:
            return start(lambda _: [
                "-machine", "q35", "-smp", "2",
                "-kernel", str(tiny.kernel), "-initrd", str(tiny.initrd),
                "-append", f"{tiny.cmdline} {append}".strip(), *(args or [])])

        yield boot_one


@pytest.fixture(scope="session", autouse=True)
def _need_qemu() -> None:
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed")


def test_build_manifest_and_cache(tiny: ImageInfo, images_dir: Path, tmp_path: Path) -> None:
    assert tiny.name == "tiny"
    assert tiny.kernel == images_dir / "tiny" / "vmlinuz"
    assert tiny.initrd == images_dir / "tiny" / "initrd.img"
    assert tiny.size == tiny.kernel.stat().st_size + tiny.initrd.stat().st_size
    assert tiny.initrd.stat().st_size < 8 * 1024 * 1024
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+-cloud-amd64", tiny.kernel_version)
    assert f"linux-image-{tiny.kernel_version}" in tiny.packages
    assert "busybox-static" in tiny.packages
    assert "virtio_net" in tiny.boot_modules and "pvpanic_pci" in tiny.boot_modules

    manifest = json.loads((images_dir / "tiny" / "manifest.json").read_text())
    assert manifest["kernel_version"] == tiny.kernel_version
    assert manifest["files"]["vmlinuz"]["sha256"] == _sha256(tiny.kernel)
    assert manifest["files"]["initrd.img"]["sha256"] == _sha256(tiny.initrd)
    assert [i.name for i in list_images(images_dir)] == ["tiny"]
    assert find_image(images_dir, "tiny").kernel_version == tiny.kernel_version
    # No temporary build directories left behind (the .debs are cached elsewhere).
    assert sorted(p.name for p in images_dir.iterdir()) == [".tiny.lock", "tiny"]

    # Cached: a second build does nothing (no progress, files untouched).
    mtime = tiny.initrd.stat().st_mtime_ns
    lines: list[str] = []
    again = build_tiny(images_dir, cache_dir=CACHE, progress=lines.append)
    assert lines == []
    assert again == tiny
    assert tiny.initrd.stat().st_mtime_ns == mtime

    # A copy whose initrd no longer matches its manifest is rebuilt (from the cached .debs).
    other = tmp_path / "images"
    shutil.copytree(images_dir / "tiny", other / "tiny")
    with open(other / "tiny" / "initrd.img", "ab") as f:
        f.write(b"garbage")
    lines = []
    rebuilt = build_tiny(other, cache_dir=CACHE, progress=lines.append)
    assert any(line.startswith("Writing initramfs") for line in lines), lines
    assert not any(line.startswith("Downloading") for line in lines), lines
    assert _sha256(rebuilt.initrd) == _sha256(tiny.initrd)  # the build is reproducible
    assert sorted(p.name for p in other.iterdir()) == [".tiny.lock", "tiny"]


def test_build_errors_say_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = tmp_path / "images"
    # No Debian mirror reachable (apt honours http_proxy; nothing listens on port 9).
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    with pytest.raises(BackendError, match=r"^Failed building image tiny: .*cannot reach the "
                       r"Debian mirror: check network access to deb\.debian\.org"):  # fmt: skip
        build_tiny(images, cache_dir=tmp_path / "cache", progress=lambda _: None)
    # No apt at all.
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    with pytest.raises(BackendError, match=r"^Failed building image tiny: apt-cache not found; "
                       r"install apt"):  # fmt: skip
        build_tiny(images, cache_dir=tmp_path / "cache", progress=lambda _: None)
    # Nothing half-built is left behind.
    assert sorted(p.name for p in images.iterdir()) == [".tiny.lock"]
    assert list_images(images) == []


def test_boot_shell_modules_network_powerdown(boot: Any, tiny: ImageInfo, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    guest = boot(
        append="xenia.ip=10.0.2.42/24 xenia.gw=10.0.2.2 xenia.hostname=tinytest",
        args=[
            "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
            "-netdev", "user,id=n1", "-device", "virtio-net-pci,netdev=n1",
            "-blockdev", f"driver=file,filename={disk},node-name=d0",
            "-device", "virtio-blk-pci,drive=d0",
            "-device", "pvpanic",
        ],
    )  # fmt: skip
    ready = guest.wait_ready()
    print(f"q35 boot to ready line: {ready:.2f} s")

    assert guest.run("uname -r").strip() == tiny.kernel_version
    assert guest.run("hostname").strip() == "tinytest"
    guest.run("ip link show eth0")
    loaded = {line.split()[0] for line in guest.run("cat /proc/modules").splitlines()}
    assert set(tiny.boot_modules) <= loaded, set(tiny.boot_modules) - loaded
    assert {"virtio_net", "virtio_blk", "pvpanic"} <= loaded
    assert set(tiny.missing_modules) <= set(BOOT_MODULES) - set(tiny.boot_modules)
    assert guest.run("cat /proc/sys/kernel/sysrq").strip() == "1"
    assert guest.run("cat /proc/sys/kernel/tainted").strip() == "0"

    # Static address from xenia.ip=, set before the ready line; the gateway answers.
    assert "inet 10.0.2.42/24" in guest.run("ip -4 addr show eth0")
    assert "default via 10.0.2.2 dev eth0" in guest.run("ip route")
    guest.run("ping -c 1 -W 5 10.0.2.2")
    # eth1 has no static config: DHCP in the background (QEMU's user network: 10.0.2.15).
    deadline = time.monotonic() + 20
    while "inet 10.0.2.15/24" not in guest.run("ip -4 addr show eth1"):
        assert time.monotonic() < deadline, "eth1 got no DHCP lease"
        time.sleep(0.5)

    # The tools other tests use.
    for tool in ("nc", "md5sum", "sha256sum", "dd", "mkfs.ext2", "mount", "ping", "ip", "free",
                 "top", "modprobe", "poweroff"):  # fmt: skip
        guest.run(f"command -v {tool} >/dev/null")
    # ext2 on a virtio disk (the ext4 driver mounts it).
    guest.run("mkfs.ext2 /dev/vda >/dev/null")
    guest.run("mkdir -p /mnt/d && mount -t ext2 /dev/vda /mnt/d")
    guest.run("echo hello > /mnt/d/f && sync && umount /mnt/d && mount /dev/vda /mnt/d")
    assert guest.run("cat /mnt/d/f").strip() == "hello"

    # ACPI power button -> acpid -> poweroff -> QEMU exits.
    guest.qmp("system_powerdown")
    try:
        rc = guest.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        raise AssertionError("guest did not power off within 20 s of system_powerdown") from None
    assert rc == 0
    assert "xenia-tiny: power button pressed" in guest.console_text()


def test_cpu_hotplug_onlines_and_kernel_ip_format(boot: Any) -> None:
    guest = boot(
        append="ip=10.0.2.50::10.0.2.2:255.255.255.0:kiphost:eth0:off",
        args=[
            "-smp", "1,maxcpus=2",
            "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
        ],
    )  # fmt: skip
    guest.wait_ready()
    assert guest.run("hostname").strip() == "kiphost"
    assert "inet 10.0.2.50/24" in guest.run("ip -4 addr show eth0")
    assert "default via 10.0.2.2" in guest.run("ip route")
    assert guest.run("cat /sys/devices/system/cpu/online").strip() == "0"

    slots = guest.qmp("query-hotpluggable-cpus")
    free = [s for s in slots if "qom-path" not in s]
    assert len(free) == 1, slots
    props = {k: v for k, v in free[0]["props"].items() if k != "node-id"}
    guest.qmp("device_add", driver=free[0]["type"], id="vcpu1", **props)
    t0 = time.monotonic()
    while guest.run("cat /sys/devices/system/cpu/online").strip() != "0-1":
        assert time.monotonic() - t0 < 20, "hot-added vCPU was not onlined by the guest"
        time.sleep(0.2)
    print(f"hot-added vCPU online after {time.monotonic() - t0:.2f} s")
    assert guest.run("nproc").strip() == "2"

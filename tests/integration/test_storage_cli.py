"""Storage pools and volumes through the real CLI and a real xeniad (no guest needed).

Images are checked from outside with qemu-img and qemu-io, never through Xenia itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import failed
from tests.integration.harness import Host, Image

pytestmark = pytest.mark.integration

MiB = 2**20


@pytest.fixture
def host(request: pytest.FixtureRequest) -> Iterator[Host]:
    # Storage needs no guest: skip the tiny image build the shared fixture depends on.
    h = Host(Image(Path("/nonexistent/kernel"), Path("/nonexistent/initrd")))
    try:
        h.start_daemon()
        yield h
    finally:
        if failed(request):
            h.dump_logs()
        h.cleanup()


# -- helpers -----------------------------------------------------------------------------
def pool_dir(host: Host, pool: str = "default") -> Path:
    return host.root / "state" / "pools" / pool


def qemu_info(path: Path, fmt: str) -> dict[str, Any]:
    out = subprocess.run(["qemu-img", "info", "--output=json", "-U", "-f", fmt, str(path)],
                         capture_output=True, text=True, check=True).stdout
    data: dict[str, Any] = json.loads(out)
    return data


def qemu_io(path: Path, fmt: str, command: str) -> bool:
    readonly = ["-r", "-U"] if command.startswith("read") else []
    res = subprocess.run(["qemu-io", "-f", fmt, *readonly, "-c", command, str(path)],
                         capture_output=True, text=True)
    return res.returncode == 0


def write_file_into(data: Path, path: Path, fmt: str) -> None:
    """Copy a file's bytes to the start of an existing image (-n: do not create it)."""
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", fmt, str(data), str(path)],
                   check=True, capture_output=True)


def same_content(data: Path, path: Path, fmt: str) -> bool:
    """The image starts with the file's bytes and is zero after them."""
    res = subprocess.run(["qemu-img", "compare", "-U", "-f", "raw", "-F", fmt, str(data),
                          str(path)], capture_output=True, text=True)
    return res.returncode == 0


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def volumes(host: Host, pool: str = "default") -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in json.loads(host.xenia("volume", "list", "--pool", pool,
                                                        "--json").stdout)}


def fails(host: Host, *args: str, match: str) -> str:
    res = host.xenia(*args, check=False)
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    assert match in res.stderr, res.stderr
    return res.stderr


def snapshot_of_state(host: Host) -> tuple[list[tuple[str, int, int]], list[Any], str]:
    """What the test owns: the files under its pools (size, mtime) and the pools' and
    volumes' listings, without a pool's capacity and free bytes: those belong to the
    filesystem, which other processes write to (it failed a fresh-clone run once)."""
    files = sorted((str(p.relative_to(host.root / "state")), st.st_size, st.st_mtime_ns)
                   for p in (host.root / "state" / "pools").rglob("*")
                   if (st := p.lstat()))
    pools = [{k: v for k, v in p.items() if k not in ("capacity", "available")}
             for p in json.loads(host.xenia("pool", "list", "--json").stdout)]
    return (files, pools, host.xenia("volume", "list", "--json").stdout)


# -- tests -------------------------------------------------------------------------------
def test_default_pool_and_volume_create(host: Host) -> None:
    out = host.xenia("pool", "list").stdout.splitlines()
    assert out[0].split() == ["NAME", "TYPE", "STATE", "VOLUMES", "CAPACITY", "AVAILABLE",
                              "PATH"]
    assert out[1].split()[:4] == ["default", "dir", "active", "0"]
    assert out[1].split()[-1] == str(pool_dir(host))

    res = host.xenia("volume", "create", "disk1", "64M")
    assert "Volume 'disk1' created in pool 'default'" in res.stdout
    host.xenia("volume", "create", "--format", "raw", "disk2", "10GiB")
    q = qemu_info(pool_dir(host) / "disk1.qcow2", "qcow2")
    assert (q["format"], q["virtual-size"]) == ("qcow2", 64 * MiB)
    r = qemu_info(pool_dir(host) / "disk2.raw", "raw")
    assert (r["format"], r["virtual-size"]) == ("raw", 10 * 2**30)
    assert r["actual-size"] < MiB  # sparse

    table = host.xenia("volume", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "FORMAT", "SIZE", "ALLOCATED", "PATH", "BACKING",
                                "REPLICA"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["disk1"][1:3] == ["qcow2", "64MiB"]
    assert rows["disk2"][1:3] == ["raw", "10GiB"]
    assert rows["disk1"][4] == str(pool_dir(host) / "disk1.qcow2") and rows["disk1"][5] == "-"
    assert rows["disk1"][6] == "-"  # no replica
    vols = volumes(host)
    assert vols["disk2"]["virtual_size"] == 10 * 2**30 and vols["disk2"]["backing"] is None
    assert host.xenia("volume", "path", "disk1").stdout.strip() == \
        str(pool_dir(host) / "disk1.qcow2")
    assert host.xenia("pool", "list", "--json").stdout.count('"volumes": 2') == 1


def test_clone_snapshot_and_data(host: Host, tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(3 * MiB))
    host.xenia("volume", "create", "base", "64M")
    base = pool_dir(host) / "base.qcow2"
    write_file_into(data, base, "qcow2")
    assert same_content(data, base, "qcow2")

    # clone: a thin overlay backed by base, with base's data
    host.xenia("volume", "clone", "--linked", "base", "web")
    web = pool_dir(host) / "web.qcow2"
    q = qemu_info(web, "qcow2")
    assert q["backing-filename"] == "base.qcow2" and q["backing-filename-format"] == "qcow2"
    assert q["actual-size"] < MiB
    assert volumes(host)["web"]["backing"] == "base"
    assert same_content(data, web, "qcow2")
    # writes to the clone stay in the clone
    assert qemu_io(web, "qcow2", f"write -P 0x5a {4 * MiB} {MiB}")
    assert qemu_io(web, "qcow2", f"read -P 0x5a {4 * MiB} {MiB}")
    assert same_content(data, base, "qcow2")

    # snapshot: a read-only point-in-time copy; the volume's file is left as it was
    before = sha(web)
    res = host.xenia("volume", "snapshot", "web", "before-upgrade")
    assert "Snapshot 'before-upgrade' of volume 'web' created" in res.stdout
    assert sha(web) == before
    snap = pool_dir(host) / ".snapshots" / "web" / "before-upgrade.qcow2"
    assert snap.is_file()
    assert oct(snap.stat().st_mode & 0o777) == "0o444"
    assert qemu_io(snap, "qcow2", f"read -P 0x5a {4 * MiB} {MiB}")
    assert qemu_io(snap, "qcow2", f"read -P 0 {3 * MiB} {MiB}")
    # the snapshot holds web's own data, base's data comes through its backing file
    assert qemu_info(snap, "qcow2")["backing-filename"] == "../../base.qcow2"

    # later writes to the volume do not reach the snapshot
    assert qemu_io(web, "qcow2", f"write -P 0x77 0 {MiB}")
    assert qemu_io(snap, "qcow2", f"read -P 0x5a {4 * MiB} {MiB}")
    assert not qemu_io(snap, "qcow2", f"read -P 0x77 0 {MiB}")

    listing = host.xenia("volume", "snapshot-list", "web").stdout.splitlines()
    assert listing[0].split() == ["NAME", "CREATED", "SIZE", "ALLOCATED", "PATH"]
    assert listing[1].split()[0] == "before-upgrade" and listing[1].split()[-1] == str(snap)
    assert volumes(host)["web"]["snapshots"] == ["before-upgrade"]

    # restore puts the snapshot's content back
    host.xenia("volume", "snapshot-restore", "web", "before-upgrade")
    assert not qemu_io(web, "qcow2", f"read -P 0x77 0 {MiB}")
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(web),
                    str(tmp_path / "web.raw")], check=True)
    content = (tmp_path / "web.raw").read_bytes()
    assert content[:3 * MiB] == data.read_bytes()
    assert content[4 * MiB:5 * MiB] == b"\x5a" * MiB

    # a raw volume snapshots too (a plain sparse copy)
    host.xenia("volume", "create", "-f", "raw", "plain", "8M")
    plain = pool_dir(host) / "plain.raw"
    write_file_into(data, plain, "raw")
    host.xenia("volume", "snapshot", "plain", "s1")
    assert same_content(data, pool_dir(host) / ".snapshots" / "plain" / "s1.raw", "raw")

    host.xenia("volume", "snapshot-delete", "web", "before-upgrade")
    assert not snap.exists()
    assert host.xenia("volume", "snapshot-list", "web").stdout.splitlines()[1:] == []


def test_resize(host: Host) -> None:
    host.xenia("volume", "create", "v", "64M")
    path = pool_dir(host) / "v.qcow2"
    assert qemu_io(path, "qcow2", "write -P 0x11 0 1M")
    assert "Volume 'v' is now 128MiB" in host.xenia("volume", "resize", "v", "128M").stdout
    assert qemu_info(path, "qcow2")["virtual-size"] == 128 * MiB
    host.xenia("volume", "resize", "v", "+1G")
    assert qemu_info(path, "qcow2")["virtual-size"] == 128 * MiB + 2**30
    fails(host, "volume", "resize", "v", "64M", match="needs --shrink")
    fails(host, "volume", "resize", "v", "-64M", match="needs --shrink")
    assert qemu_info(path, "qcow2")["virtual-size"] == 128 * MiB + 2**30
    host.xenia("volume", "resize", "--shrink", "v", "64M")
    assert qemu_info(path, "qcow2")["virtual-size"] == 64 * MiB
    assert qemu_io(path, "qcow2", "read -P 0x11 0 1M")


def test_deletes_that_would_lose_data_are_refused(host: Host) -> None:
    own = host.root / "fastdisk"
    res = host.xenia("pool", "create", "fast", "--path", str(own))
    assert f"Pool 'fast' created in {own}" in res.stdout
    assert own.is_dir()
    host.xenia("volume", "create", "--pool", "fast", "base", "16M")
    host.xenia("volume", "clone", "--linked", "--pool", "fast", "base", "c1")

    err = fails(host, "volume", "delete", "--pool", "fast", "base", match="c1 is backed by it")
    assert err.startswith("xenia: Failed to delete volume 'base' in pool 'fast'")
    assert (own / "base.qcow2").exists()
    err = fails(host, "pool", "delete", "fast", match="it holds 2 volumes (base, c1)")
    assert "xenia volume delete --pool fast" in err
    assert own.is_dir() and sorted(volumes(host, "fast")) == ["base", "c1"]

    host.xenia("volume", "delete", "--pool", "fast", "c1")
    host.xenia("volume", "delete", "--pool", "fast", "base")
    assert volumes(host, "fast") == {}
    assert "Pool 'fast' deleted" in host.xenia("pool", "delete", "fast").stdout
    assert not own.exists()
    assert [p["name"] for p in json.loads(host.xenia("pool", "list", "--json").stdout)] == \
        ["default"]


def test_bad_input_changes_nothing(host: Host) -> None:
    host.xenia("volume", "create", "keep", "16M")
    before = snapshot_of_state(host)
    cases = [
        (("volume", "create", "../escape", "1G"), "not a valid volume name"),
        (("volume", "create", "a/b", "1G"), "not a valid volume name"),
        (("volume", "create", ".hidden", "1G"), "not a valid volume name"),
        (("volume", "create", "x", "1Q"), "is not a size"),
        (("volume", "create", "x", "0"), "must be more than 0"),
        (("volume", "create", "x", "1000"), "multiple of 512"),
        (("volume", "create", "x", "-5G"), "No such option"),
        (("volume", "create", "--format", "vmdk", "x", "1G"), "Invalid value for '--format'"),
        (("volume", "create", "keep", "1G"), "has a volume 'keep' already"),
        (("volume", "create", "--pool", "nopool", "x", "1G"), "there is no pool 'nopool'"),
        (("volume", "delete", "nope"), "no such volume"),
        (("volume", "delete", ".."), "not a valid volume name"),
        (("volume", "clone", "keep", "../x"), "not a valid volume name"),
        (("volume", "clone", "nope", "x"), "no such volume"),
        (("volume", "resize", "keep", "huge"), "is not a size"),
        (("volume", "snapshot", "keep", "a/b"), "not a valid snapshot name"),
        (("volume", "snapshot-restore", "keep", "nope"), "no such snapshot"),
        (("pool", "create", "default"), "exists already"),
        (("pool", "create", "bad/name"), "not a valid pool name"),
        (("pool", "create", "x", "--type", "zfs"), "unknown pool type 'zfs'"),
        (("pool", "create", "x", "--path", str(pool_dir(host))), "overlaps"),
        (("pool", "delete", "nopool"), "there is no pool 'nopool'"),
    ]
    for args, match in cases:
        fails(host, *args, match=match)
    assert snapshot_of_state(host) == before


def test_volumes_survive_a_daemon_restart(host: Host) -> None:
    host.xenia("volume", "create", "v", "16M")
    host.xenia("pool", "create", "p2", "--path", str(host.root / "p2"))
    host.xenia("volume", "create", "--pool", "p2", "w", "8M")
    before = (volumes(host), volumes(host, "p2"))
    host.kill_daemon()
    host.start_daemon()
    assert (volumes(host), volumes(host, "p2")) == before

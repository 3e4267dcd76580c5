"""Issue 2 item 8: bad input gets a clear error, a non-zero exit and changes nothing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import Host

pytestmark = pytest.mark.integration


def state(host: Host) -> tuple[list[str], list[str]]:
    names = [d["name"] for d in host.domains()]
    run_dirs = sorted(p.name for p in (host.root / "run" / "domains").iterdir())
    return names, run_dirs


def fails(host: Host, *args: str, match: str) -> str:
    res = host.xenia(*args, check=False)
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr
    assert match in res.stderr, res.stderr
    return res.stderr


def test_bad_configs_change_nothing(host: Host, tmp_path: Path) -> None:
    host.create("keep")
    before = state(host)

    bad = tmp_path / "bad.cfg"
    bad.write_text('name = "x"\nmemory = 256\nvcpus = [1, 2\nkernel = "/k"\n')
    err = fails(host, "create", str(bad), match=f"{bad}:4:")
    assert "x" not in [d["name"] for d in host.domains()]

    fails(host, "create", str(host.write_cfg("t1", type="xen")), match="type")
    fails(host, "create", str(host.write_cfg("t2", kernel="/nonexistent/vmlinuz")),
          match="'/nonexistent/vmlinuz' does not exist")
    fails(host, "create", str(host.write_cfg("t3", kernel=str(tmp_path))), match="is not a file")
    fails(host, "create", str(host.write_cfg("t4", ramdisk="/nonexistent/initrd")),
          match="ramdisk '/nonexistent/initrd' does not exist")
    fails(host, "create", str(host.write_cfg("t5", memory=64 * 1024 * 1024)),
          match="but the host has only")
    fails(host, "create", str(host.write_cfg("keep")), match="already")
    fails(host, "create", str(host.write_cfg("t6", memory=0)), match="memory")
    fails(host, "create", "/nonexistent.cfg", match="/nonexistent.cfg")
    assert state(host) == before
    assert host.run("keep", "echo fine").strip() == "fine"
    del err


def test_unknown_domain(host: Host) -> None:
    for verb in ("destroy", "pause", "unpause", "shutdown", "reboot", "console", "domid"):
        fails(host, verb, "nosuch", match="nosuch")
    fails(host, "rename", "nosuch", "other", match="nosuch")
    fails(host, "domname", "999", match="999")


def test_daemon_unreachable(tmp_path: Path) -> None:
    env = dict(os.environ, XENIA_ROOT=str(tmp_path), XENIA_NO_AUTOSTART="1")
    res = subprocess.run([sys.executable, "-m", "xenia.cli", "list"], env=env,
                         capture_output=True, text=True)
    assert res.returncode != 0
    assert "Failed to reach xeniad" in res.stderr and "not running" in res.stderr


def test_autostart_starts_a_daemon(tmp_path: Path) -> None:
    root = Path(os.path.join("/tmp", f"xa-{os.getpid()}"))
    env = dict(os.environ, XENIA_ROOT=str(root))
    env.pop("XENIA_NO_AUTOSTART", None)
    try:
        res = subprocess.run([sys.executable, "-m", "xenia.cli", "list"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert "started xeniad" in res.stderr and "Domain-0" in res.stdout
        # It shows as xeniad in `ps -e` (comm) and `ps ax` (its command line).
        pid = int((root / "run" / "xeniad.pid").read_text().split()[0])
        assert Path(f"/proc/{pid}/comm").read_text() == "xeniad\n"
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        assert cmdline[0].split() == [b"xeniad"], cmdline
    finally:
        pidfile = root / "run" / "xeniad.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, 15)
        import shutil
        shutil.rmtree(root, ignore_errors=True)


def test_qemu_not_installed(host: Host, tmp_path: Path) -> None:
    # A daemon whose PATH has no QEMU: the error says how to install it.
    host.kill_daemon()
    empty = tmp_path / "bin"
    empty.mkdir()
    host.env["PATH"] = str(empty)
    host.start_daemon()
    host.env["PATH"] = os.environ["PATH"]
    fails(host, "create", str(host.write_cfg("q")), match="apt-get install qemu-system-x86")
    assert not host.has_domain("q")


def test_record_of_a_newer_xeniad_is_refused(host: Host) -> None:
    """A record in a shape this xeniad does not know (a newer one wrote it; Xenia was
    downgraded) stops the daemon with a message, instead of being read and rewritten
    without the fields it does not know."""
    host.kill_daemon(signal.SIGTERM)
    record = {"uuid": "5e0c1b2a-9f8e-4d7c-a6b5-c4d3e2f1a0b9", "name": "future", "domid": 9,
              "state": "running", "created_at": 0.0, "started_at": 0.0, "schema": 99,
              "config": {"name": "future", "type": "pv"}, "runtime": {"new_field": 1}}
    text = json.dumps(record)
    db_path = host.root / "state" / "xenia.db"
    with contextlib.closing(sqlite3.connect(db_path)) as db, db:
        db.execute("INSERT INTO domains(uuid, name, domid, record) VALUES(?,?,?,?)",
                   (record["uuid"], "future", 9, text))
    res = subprocess.run(host.daemon_argv(), env=host.env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert ("Failed to read the record of domain 'future' (5e0c1b2a-9f8e-4d7c-a6b5-"
            "c4d3e2f1a0b9): a newer xeniad wrote it (schema version 99; this one knows up "
            "to 2)") in res.stderr
    with contextlib.closing(sqlite3.connect(db_path)) as db, db:
        assert db.execute("SELECT record FROM domains").fetchone()[0] == text  # untouched
        db.execute("DELETE FROM domains")
    host.start_daemon()

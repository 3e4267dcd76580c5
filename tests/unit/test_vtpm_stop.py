"""stop_swtpm signals only a swtpm of this run dir, never a pid planted in its pid file
(the run dir is writable by QEMU's uid)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from xenia.qemu import vtpm


def _started(argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, cwd=cwd)
    deadline = time.monotonic() + 10
    # Popen returns inside execve, before /proc/PID/cmdline shows the new argv.
    while not Path(f"/proc/{proc.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc


def test_a_planted_pid_is_not_signalled(tmp_path: Path) -> None:
    other = _started([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path)
    try:
        (tmp_path / vtpm.PIDFILE).write_text(f"{other.pid}\n")
        vtpm.stop_swtpm(tmp_path)
        time.sleep(0.2)
        assert other.poll() is None  # not a swtpm of this run dir: left alone
    finally:
        other.kill()
        other.wait()


def test_this_run_dirs_swtpm_is_stopped(tmp_path: Path) -> None:
    # A stand-in named swtpm whose argv names the run dir, as the real one's does.
    fake = tmp_path / "bin" / "swtpm"
    fake.parent.mkdir()
    fake.symlink_to(sys.executable)
    proc = _started([str(fake), "-c", "import time; time.sleep(30)",
                     f"file={tmp_path / vtpm.PIDFILE}"], tmp_path)
    try:
        (tmp_path / vtpm.PIDFILE).write_text(f"{proc.pid}\n")
        vtpm.stop_swtpm(tmp_path)
        assert proc.wait(timeout=10) == -15  # SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

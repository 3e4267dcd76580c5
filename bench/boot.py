"""Boot benchmark: `xenia create` to the guest's ready line, against bare QEMU.

Both sides run the same QEMU argv (xenia's, read back from the running process; the bare
run drops -S since nobody will `cont` it) in the same process, interleaved, N times each.
The ratio xenia/bare is the toolstack's overhead (target: at most 1.05).

    sudo .venv/bin/python -m bench.boot [--runs 5] [--no-write]
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

from bench.common import (
    arg_parser,
    launch_bare,
    median,
    stop_bare,
    tiny_image,
    write_section,
)

READY = b"xenia-tiny: ready"


def wait_for(path: Path, text: bytes, timeout: float = 120.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if text in path.read_bytes():
                return time.monotonic()
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    raise TimeoutError(f"{text!r} not in {path} after {timeout}s")


class Xenia:
    def __init__(self, kernel: Path, initrd: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="xb-", dir="/tmp"))
        self.env = dict(os.environ, XENIA_ROOT=str(self.root), XENIA_NO_AUTOSTART="1")
        # As installed: with bytecode. (This sandbox sets PYTHONDONTWRITEBYTECODE, which
        # would make every CLI call compile the package from source.)
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.cfg = self.root / "bench.cfg"
        self.cfg.write_text(
            f'name = "bench"\nkernel = "{kernel}"\nramdisk = "{initrd}"\n'
            'extra = "console=ttyS0"\nmemory = 256\nvcpus = 2\n'
        )
        log = open(self.root / "xeniad.log", "ab")  # noqa: SIM115
        self.daemon = subprocess.Popen([sys.executable, "-m", "xenia.daemon"], env=self.env,
                                       stdout=log, stderr=log, start_new_session=True)
        sock = self.root / "run" / "xeniad.sock"
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.cli("list")

    def cli(self, *args: str) -> str:
        return subprocess.run([sys.executable, "-m", "xenia.cli", *args], env=self.env,
                              check=True, capture_output=True, text=True).stdout

    def boot(self) -> tuple[float, list[str]]:
        uuid = str(uuidlib.uuid4())
        log = self.root / "run" / "domains" / uuid / "console.log"
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "xenia.cli", "create", str(self.cfg),
                        f"uuid={uuid}"], env=self.env, check=True, capture_output=True)
        t1 = wait_for(log, READY)
        pid = int((log.parent / "qemu.pid").read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        self.cli("destroy", "bench")
        return t1 - t0, argv

    def close(self) -> None:
        self.daemon.send_signal(signal.SIGTERM)
        self.daemon.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


def bare_boot(argv: list[str], tmp: Path) -> float:
    """The same argv with the run dir moved to `tmp` and no -S."""
    old = Path(argv[argv.index("-pidfile") + 1]).parent
    args = [a.replace(str(old), str(tmp)) for a in argv if a != "-S"]
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.monotonic()
    proc = launch_bare(args)
    try:
        t1 = wait_for(tmp / "console.log", READY)
    finally:
        stop_bare(proc)
    shutil.rmtree(tmp, ignore_errors=True)
    return t1 - t0


def main() -> None:
    ap = arg_parser(runs=5)
    args = ap.parse_args()
    kernel, initrd = tiny_image()
    x = Xenia(kernel, initrd)
    xs: list[float] = []
    bs: list[float] = []
    try:
        _, argv = x.boot()  # warm-up (page cache, first import), not counted
        tmp = Path(tempfile.mkdtemp(prefix="xbb-", dir="/tmp"))
        bare_boot(argv, tmp)
        for i in range(args.runs):
            t, argv = x.boot()
            b = bare_boot(argv, tmp)
            xs.append(t)
            bs.append(b)
            print(f"run {i + 1}: xenia {t:.3f} s, bare QEMU {b:.3f} s", flush=True)
    finally:
        x.close()
    mx, mb = median(xs), median(bs)
    ratio = mx / mb
    print(f"median: xenia {mx:.3f} s, bare QEMU {mb:.3f} s, ratio {ratio:.3f} "
          f"(overhead {100 * (ratio - 1):+.1f}%, target <= +5%)")
    if not args.no_write:
        rows = "\n".join(f"| {i + 1} | {a:.3f} | {b:.3f} |" for i, (a, b) in
                         enumerate(zip(xs, bs, strict=True)))
        write_section("Boot: xenia create to ready line (bench/boot.py)", f"""
Tiny image (Debian cloud kernel + busybox initramfs), 256 MiB, 2 vCPUs, q35, TCG. Xenia:
`xenia create FILE` (CLI start, config parse, API call, QEMU launch paused, QMP, `cont`)
until `xenia-tiny: ready` is in the console log. Bare: the same QEMU argv run directly
(without -S). Interleaved, {args.runs} runs each after one warm-up pair.

| run | xenia (s) | bare QEMU (s) |
|-----|-----------|---------------|
{rows}

**Median: xenia {mx:.3f} s, bare QEMU {mb:.3f} s, ratio {ratio:.3f}
({100 * (ratio - 1):+.1f}% overhead; target at most +5%).**
""")


if __name__ == "__main__":
    main()

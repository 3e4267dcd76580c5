"""Shared bits of the benchmarks: machine description, results file, the tiny image."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "benchmarks.md"
CACHE = Path("/var/tmp/xenia-test-cache")


def arg_parser(runs: int) -> argparse.ArgumentParser:
    """The options every benchmark takes: how many runs, and whether to record them."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=runs, help=f"runs of each side (default {runs})")
    ap.add_argument("--no-write", action="store_true",
                    help="print the results only; leave docs/benchmarks.md as it is")
    return ap


def tiny_image() -> tuple[Path, Path]:
    from xenia.images.tiny import build_tiny

    img = build_tiny(CACHE / "images", cache_dir=CACHE / "debs", progress=lambda s: None)
    return Path(img.kernel), Path(img.initrd)


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1]) // 1024  # type: ignore[index]
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                          text=True).stdout.splitlines()[0]
    from xenia.qemu.accel import probe

    acc = probe()
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem} MiB, Linux {platform.release()}, "
            f"{qemu}, accelerator {acc.name}")


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def write_section(title: str, body: str) -> None:
    """Replace (or append) the section `## title` in docs/benchmarks.md."""
    text = RESULTS.read_text() if RESULTS.exists() else (
        "# Benchmarks\n\nEach section is written by its script in `bench/`; rerun it to "
        "refresh. Ratios compare against a baseline run in the same process.\n"
    )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = f"## {title}\n\nRun {stamp} on: {machine()}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip() + "\n\n" + section
    RESULTS.write_text(text.rstrip() + "\n")



def launch_bare(argv: list[str]) -> subprocess.Popen[bytes]:
    """Run a QEMU argv read back from a running domain, in the background. Xenia's jail
    (qemu/jail.py) runs QEMU in the foreground and confined by -sandbox (spawn=deny),
    so the argv neither daemonizes nor may be made to."""
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def stop_bare(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()

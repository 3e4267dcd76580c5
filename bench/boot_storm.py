"""Boot storm: N tiny guests created at once on one xeniad; how many reach the ready line.

Measures how often a TCG guest dies or hangs in early boot on a busy host (docs/decisions.md,
"Early boot on a busy TCG host"). Each round creates N guests concurrently (1 vCPU, 96 MiB,
on_crash=preserve so a dead guest's console stays readable), waits until every guest has
printed the ready line, panicked, or the round's time is up, and then destroys them all.

    sudo .venv/bin/python -m bench.boot_storm [--guests 30] [--rounds 3] [--extra ARGS]
        [--src DIR] [--no-write]

--extra appends kernel parameters to every guest's `extra`. --src runs xeniad and the CLI
from another source tree, e.g. main's before a change:
`mkdir /tmp/old && git archive main src | tar -x -C /tmp/old` then `--src /tmp/old/src`.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.harness import READY, Host, Image

from bench.common import arg_parser, median, tiny_image, write_section

PANIC = "Kernel panic - not syncing"
# Signs of a struggling early boot, counted in every guest's console (ready ones too).
MARKERS = {
    "TSC unstable": "Marking TSC unstable",
    "clocksource unstable": "as unstable because",
    "TSC calibration failed": "calibration failed",
    "RCU stall": "detected stall",
    "soft lockup": "soft lockup",
    "MP-BIOS timer bug": "8254 timer not connected",
}


@dataclass
class Round:
    ready: list[float] = field(default_factory=list)  # seconds from the round's start
    panicked: dict[str, str] = field(default_factory=dict)  # name -> the panic line
    stuck: dict[str, str] = field(default_factory=dict)  # name -> last console lines
    markers: dict[str, int] = field(default_factory=dict)  # marker -> guests showing it
    kernel_gap: float = 0.0  # longest silence between two kernel lines, guest seconds
    seconds: float = 0.0


def kernel_gap(text: str) -> float:
    """The longest time between two printk stamps before the first userspace line: how long
    a booting kernel may be quiet (the boot watch's hang timeout must be longer)."""
    stamps = []
    for line in text.splitlines():
        m = re.match(r"\[\s*(\d+\.\d+)\]", line.strip())
        if m is None and line.strip():
            break
        if m is not None:
            stamps.append(float(m[1]))
    return max((b - a for a, b in zip(stamps, stamps[1:], strict=False)), default=0.0)


def tail(text: str, lines: int = 4) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def storm(host: Host, guests: int, extra: str, timeout: float) -> Round:
    names = [f"s{i}" for i in range(guests)]
    uuids = {n: str(uuidlib.uuid4()) for n in names}
    logs = {n: host.root / "run" / "domains" / uuids[n] / "console.log" for n in names}
    cfgs = {n: host.write_cfg(n, memory=96, on_crash="preserve",
                              extra=f"console=ttyS0 {extra}".strip()) for n in names}
    result = Round()
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=guests) as pool:
        for res in pool.map(lambda n: host.xenia("create", str(cfgs[n]), f"uuid={uuids[n]}",
                                                 check=False), names):
            if res.returncode != 0:
                raise SystemExit(f"create failed: {res.stdout}{res.stderr}")
    waiting = set(names)
    deadline = t0 + timeout
    while waiting and time.monotonic() < deadline:
        for n in sorted(waiting):
            try:
                text = logs[n].read_text(errors="replace")
            except FileNotFoundError:
                continue
            if READY in text:
                result.ready.append(time.monotonic() - t0)
                waiting.discard(n)
            elif PANIC in text:
                line = next(x for x in text.splitlines() if PANIC in x)
                result.panicked[n] = line.strip()[:160]
                waiting.discard(n)
        time.sleep(0.5)
    for n in waiting:
        try:
            result.stuck[n] = tail(logs[n].read_text(errors="replace"))
        except FileNotFoundError:
            result.stuck[n] = "(no console log: the domain is gone)"
    result.seconds = time.monotonic() - t0
    for n in names:
        try:
            text = logs[n].read_text(errors="replace")
        except FileNotFoundError:
            continue
        for marker, needle in MARKERS.items():
            if needle in text:
                result.markers[marker] = result.markers.get(marker, 0) + 1
        result.kernel_gap = max(result.kernel_gap, kernel_gap(text))
    return result


def main() -> None:
    ap = arg_parser(runs=3)
    ap.add_argument("--guests", type=int, default=30)
    ap.add_argument("--extra", default="", help="kernel parameters added to every guest")
    ap.add_argument("--src", help="run xeniad and the CLI from this source tree")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds a round may take")
    args = ap.parse_args()
    kernel, initrd = tiny_image()
    host = Host(Image(kernel, initrd))
    if args.src:
        host.env["PYTHONPATH"] = str(Path(args.src).resolve())
    host.env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: 30 CLIs at once
    rounds: list[Round] = []
    try:
        host.start_daemon()
        for i in range(args.runs):
            r = storm(host, args.guests, args.extra, args.timeout)
            rounds.append(r)
            times = sorted(r.ready)
            print(f"round {i + 1}: {len(r.ready)}/{args.guests} ready "
                  f"(median {median(times) if times else 0:.1f} s, last "
                  f"{times[-1] if times else 0:.1f} s), {len(r.panicked)} panicked, "
                  f"{len(r.stuck)} stuck; longest kernel silence {r.kernel_gap:.1f} s; seen: "
                  f"{r.markers or 'nothing'}", flush=True)
            for n, line in sorted(r.panicked.items()):
                print(f"  {n} panicked: {line}")
            for n, text in sorted(r.stuck.items()):
                print(f"  {n} stuck: {text}")
            for d in host.domains():
                host.xenia("destroy", d["name"], check=False, timeout=60)
    finally:
        host.cleanup()
    boots = args.guests * len(rounds)
    bad = sum(len(r.panicked) + len(r.stuck) for r in rounds)
    lasts = [max(r.ready) for r in rounds if r.ready]
    summary = (f"{boots - bad}/{boots} guests ready, {bad} failed "
               f"({100 * bad / boots:.1f}%); slowest guest of a round: "
               f"{', '.join(f'{t:.0f}' for t in lasts)} s")
    print(summary)
    if not args.no_write:
        extra = args.extra or "(none)"
        write_section("Boot storm: guests created at once (bench/boot_storm.py)", f"""
{args.guests} tiny guests (1 vCPU, 96 MiB, q35, TCG) created at once, {len(rounds)} rounds;
extra kernel parameters: `{extra}`; source tree: {args.src or "this one"}.

**{summary}.**
""")


if __name__ == "__main__":
    os.umask(0o022)
    main()

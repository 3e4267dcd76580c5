"""Migration benchmark: downtime and total time of live migrations, Xenia against bare QEMU
migrating between two QEMUs started with the same arguments, in the same run.

Xenia: two xeniad in network namespaces joined by a veth switch (the multi-host test
setup), `xenia migrate` back and forth (TLS on, its defaults). Bare QEMU: the same guest
argv, a destination with -incoming, QMP migrate over loopback with the same parameters
(TLS PSK, downtime limit 30 ms). Cases: an idle 256 MiB guest, and one that rewrites
8 MiB of memory in a loop (with auto-converge on both sides).

    sudo .venv/bin/python -m bench.migrate [--runs 5] [--no-write]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient
from tests.integration.harness import READY, Image
from tests.integration.multihost import Cluster

from bench.common import arg_parser, median, tiny_image, write_section
from xenia.peers.psk import make_psk, write_psk_dir

DIRTY = "(while :; do cp /tmp/keep /tmp/x; done) >/dev/null 2>&1 &"
KEEP = "dd if=/dev/urandom of=/tmp/keep bs=64k count=128 2>/dev/null"


def xenia_runs(image: Image, runs: int, dirty: bool) -> tuple[list[float], list[float],
                                                                list[str]]:
    c = Cluster(image, 2, str(os.getpid() % 40 + 10))
    downs: list[float] = []
    totals: list[float] = []
    try:
        c.start()
        c.peer(0, 1, "h1")
        c.peer(1, 0, "h0")
        a, b = c.hosts
        a.create("m", memory=256, vif=[])
        a.run("m", KEEP + ("; " + DIRTY if dirty else ""))
        time.sleep(1)
        argv = Path(f"/proc/{a.domain('m')['runtime']['pid']}/cmdline").read_bytes() \
            .decode().split("\0")[:-1]
        hosts, peer_of = [a, b], ["h1", "h0"]  # host i migrates to peer_of[i]
        extra = ["--auto-converge"] if dirty else []
        cur = 0
        for _ in range(runs):
            out = hosts[cur].xenia("migrate", *extra, "m", peer_of[cur], timeout=600).stdout
            # "Migrated 'm' to 'h1' in 1.06 s, downtime 12 ms"
            words = out.split()
            totals.append(float(words[words.index("in") + 1]))
            downs.append(float(words[words.index("downtime") + 1]))
            cur = 1 - cur
    finally:
        c.stop()
    return downs, totals, argv


async def bare_run(argv: list[str], dirty: bool, runs: int) -> tuple[list[float], list[float]]:
    """Source and destination QEMUs on loopback, driven over QMP with Xenia's parameters."""
    tmp = Path(tempfile.mkdtemp(prefix="xbm-", dir="/tmp"))
    old = Path(argv[argv.index("-pidfile") + 1]).parent
    downs: list[float] = []
    totals: list[float] = []
    procs: list[int] = []

    def launch(name: str, incoming: bool) -> Path:
        d = tmp / name
        d.mkdir()
        args = [x.replace(str(old), str(d)) for x in argv]
        if not incoming:
            args = [x for x in args if x != "-S"]
        else:
            args += ["-incoming", "defer"]
        subprocess.run(args, check=True, capture_output=True)
        procs.append(int((d / "qemu.pid").read_text()))
        return d

    async def qmp(d: Path) -> QMPClient:
        q = QMPClient(d.name)
        await q.connect(str(d / "qmp.sock"))
        return q

    ident, key = make_psk()
    write_psk_dir(tmp / "psk", ident, key)
    try:
        src_dir = launch("s0", incoming=False)
        deadline = time.monotonic() + 120
        while READY.encode() not in (src_dir / "console.log").read_bytes():
            if time.monotonic() > deadline:
                raise TimeoutError("bare source did not boot")
            await asyncio.sleep(0.1)
        from xenia.cli import console

        console.run(src_dir / "console.sock", KEEP + ("; " + DIRTY if dirty else ""))
        await asyncio.sleep(1)
        src = await qmp(src_dir)
        for i in range(runs):
            dst_dir = launch(f"d{i}", incoming=True)
            dst = await qmp(dst_dir)
            for q, ep in ((src, "client"), (dst, "server")):
                obj: dict[str, Any] = {"qom-type": "tls-creds-psk", "id": f"t{i}",
                                       "endpoint": ep, "dir": str(tmp / "psk")}
                if ep == "client":
                    obj["username"] = ident
                await q.execute("object-add", obj)
                await q.execute("migrate-set-parameters", {"tls-creds": f"t{i}",
                                                           "downtime-limit": 30})
            if dirty:
                await src.execute("migrate-set-capabilities", {"capabilities": [
                    {"capability": "auto-converge", "state": True}]})
                await src.execute("migrate-set-parameters", {"cpu-throttle-initial": 40,
                                                             "cpu-throttle-increment": 20})
            await dst.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
            port = (await dst.execute("query-migrate"))["socket-address"][0]["port"]
            await src.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
            while True:
                info = await src.execute("query-migrate")
                if info["status"] == "completed":
                    break
                if info["status"] in ("failed", "cancelled"):
                    raise RuntimeError(f"bare migration failed: {info}")
                await asyncio.sleep(0.05)
            downs.append(float(info["downtime"]))
            totals.append(float(info["total-time"]) / 1000)
            await dst.execute("cont")
            await src.execute("quit")
            with contextlib.suppress(Exception):  # EOF: QEMU is gone, as asked
                await src.disconnect()
            src = dst  # the next run migrates onwards from here
    finally:
        for pid in procs:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
    return downs, totals


def main() -> None:
    ap = arg_parser(runs=5)
    args = ap.parse_args()
    kernel, initrd = tiny_image()
    image = Image(kernel, initrd)
    rows = []
    for dirty in (False, True):
        label = "memory-dirtying (auto-converge)" if dirty else "idle"
        xd, xt, argv = xenia_runs(image, args.runs, dirty)
        bd, bt = asyncio.run(bare_run(argv, dirty, args.runs))
        print(f"{label}: xenia downtime {median(xd):.0f} ms total {median(xt):.2f} s; "
              f"bare QEMU downtime {median(bd):.0f} ms total {median(bt):.2f} s", flush=True)
        rows.append((label, xd, xt, bd, bt))
    if args.no_write:
        return
    table = "\n".join(
        f"| {label} | {median(xd):.0f} ({min(xd):.0f}-{max(xd):.0f}) | {median(xt):.2f} | "
        f"{median(bd):.0f} ({min(bd):.0f}-{max(bd):.0f}) | {median(bt):.2f} | "
        f"{median(xt) / median(bt):.2f} |"
        for label, xd, xt, bd, bt in rows)
    write_section("Live migration (bench/migrate.py)", f"""
A 256 MiB tiny guest (1 vCPU, no NIC), {args.runs} migrations each way of counting.
Xenia: `xenia migrate` between two xeniad in network namespaces over a veth switch, TLS
(PSK) on, downtime limit 30 ms (Xenia's default). Bare QEMU: the same QEMU argv, source and
`-incoming` destination on loopback, QMP `migrate` with the same TLS and parameters.
Downtime and total time as the source QEMU reports them, on both sides (Xenia's
pre-flight and preparation, ~0.3 s, come on top and are not in these numbers).
libvirt was not measured: `virsh migrate --live` needs two libvirtd hosts, which this
single-machine setup does not run.

| guest | Xenia downtime ms (range) | Xenia total s | bare downtime ms (range) \
| bare total s | total ratio |
|---|---|---|---|---|---|
{table}

Target for the idle guest: downtime at most 30 ms (Xen's paper: 60-210 ms; QEMU's default
limit 300 ms).
""")


if __name__ == "__main__":
    main()

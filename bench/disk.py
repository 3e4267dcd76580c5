"""Disk benchmark: sequential write and read inside a guest (virtio-blk, O_DIRECT) against
the same dd on the same image file on the host, in the same run.

    sudo .venv/bin/python -m bench.disk [--mib 256] [--runs 3] [--no-write]
"""

from __future__ import annotations

import subprocess
import time

from tests.integration.harness import volume

from bench.common import arg_parser, median, write_section
from bench.guest import new_host, timed


def host_dd(path: str, mib: int) -> tuple[float, float]:
    t0 = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}",
                    "oflag=direct", "conv=notrunc"], check=True, capture_output=True)
    t1 = time.monotonic()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M", "iflag=direct"], check=True,
                   capture_output=True)
    return t1 - t0, time.monotonic() - t1


def main() -> None:
    ap = arg_parser(runs=3)
    ap.add_argument("--mib", type=int, default=256)
    args = ap.parse_args()
    host = new_host()
    res: dict[str, list[float]] = {"gw": [], "gr": [], "hw": [], "hr": []}
    try:
        path = volume(host, "bench", f"{args.mib}M", fmt="raw")
        host.create("d1", disk=[f"format=raw,vdev=xvda,target={path}"])
        for r in range(args.runs):
            gw = timed(host, "d1", f"dd if=/dev/zero of=/dev/vda bs=1M count={args.mib} "
                                   "oflag=direct")
            gr = timed(host, "d1", "dd if=/dev/vda of=/dev/null bs=1M iflag=direct")
            host.xenia("destroy", "d1")  # the host baseline gets the file to itself
            hw, hr = host_dd(str(path), args.mib)
            host.create("d1", disk=[f"format=raw,vdev=xvda,target={path}"])
            for k, v in (("gw", gw), ("gr", gr), ("hw", hw), ("hr", hr)):
                res[k].append(args.mib / v)
            print(f"run {r + 1}: guest write {args.mib / gw:.0f} read {args.mib / gr:.0f} "
                  f"MiB/s; host write {args.mib / hw:.0f} read {args.mib / hr:.0f} MiB/s",
                  flush=True)
    finally:
        host.cleanup()
    m = {k: median(v) for k, v in res.items()}
    print(f"median: write guest/host {m['gw']:.0f}/{m['hw']:.0f} MiB/s "
          f"({m['gw'] / m['hw']:.3f}), read {m['gr']:.0f}/{m['hr']:.0f} MiB/s "
          f"({m['gr'] / m['hr']:.3f})")
    if not args.no_write:
        rows = "\n".join(
            f"| {i + 1} | {res['gw'][i]:.0f} | {res['hw'][i]:.0f} | {res['gr'][i]:.0f} | "
            f"{res['hr'][i]:.0f} |" for i in range(args.runs))
        write_section("Disk: sequential I/O in a guest (bench/disk.py)", f"""
A tiny guest (1 vCPU, 128 MiB) writes then reads {args.mib} MiB with `dd bs=1M` and
O_DIRECT on a raw virtio-blk volume of the default pool, timed by the guest's clock.
Baseline: the same dd with O_DIRECT on the same image file on the host (domain destroyed).

| run | guest write | host write | guest read | host read |  (MiB/s)
|-----|-------------|------------|------------|-----------|
{rows}

**Median: write {m['gw']:.0f} vs {m['hw']:.0f} MiB/s (ratio {m['gw'] / m['hw']:.3f}),
read {m['gr']:.0f} vs {m['hr']:.0f} MiB/s (ratio {m['gr'] / m['hr']:.3f}).** QEMU opens
images through the host's page cache (QEMU's default writeback cache; Xenia sets no
`cache.direct`), so the guest's O_DIRECT reads of data it just wrote come from host memory
and can beat the host's own O_DIRECT reads; writes pay TCG's emulated virtio path.
""")


if __name__ == "__main__":
    main()

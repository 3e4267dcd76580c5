"""Network benchmark: guest-to-guest TCP throughput on a Xenia bridge, against the same
transfer between two network namespaces on a host bridge, in the same run.

Both sides use busybox nc over TCP, sending a file from tmpfs; medians of N runs.

    sudo .venv/bin/python -m bench.net [--mib 100] [--runs 3] [--no-write]
"""

from __future__ import annotations

import os
import subprocess
import time

from bench.common import arg_parser, median, write_section
from bench.guest import listen, new_host, timed

BR = "xbn0"


def sh(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True)


def host_baseline(mib: int) -> float:
    """The same nc transfer between two netns joined by a host bridge (no virtualization)."""
    sh("ip", "link", "add", "xbh0", "type", "bridge")
    sh("ip", "link", "set", "xbh0", "up")
    try:
        for i in (1, 2):
            ns = f"xbns{i}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", f"xbv{i}", "type", "veth", "peer", "name", "eth0",
               "netns", ns)
            sh("ip", "link", "set", f"xbv{i}", "master", "xbh0", "up")
            sh("ip", "-n", ns, "addr", "add", f"10.79.0.{i}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        rx = subprocess.Popen(["ip", "netns", "exec", "xbns2", "busybox", "nc", "-l", "-p",
                               "5000"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        src = "/dev/shm/xenia-bench-net"
        sh("dd", "if=/dev/zero", f"of={src}", "bs=1M", f"count={mib}")
        with open(src, "rb") as f:
            t0 = time.monotonic()
            subprocess.run(["ip", "netns", "exec", "xbns1", "busybox", "nc", "10.79.0.2",
                            "5000"], stdin=f, check=True)
            took = time.monotonic() - t0
        os.unlink(src)
        rx.kill()
        rx.wait()
        return took
    finally:
        for i in (1, 2):
            subprocess.run(["ip", "netns", "del", f"xbns{i}"], capture_output=True)
        subprocess.run(["ip", "link", "del", "xbh0"], capture_output=True)


def main() -> None:
    ap = arg_parser(runs=3)
    ap.add_argument("--mib", type=int, default=100)
    args = ap.parse_args()
    host = new_host()
    guest: list[float] = []
    base: list[float] = []
    try:
        host.xenia("network", "create", BR)
        for i in (1, 2):
            host.create(f"b{i}", memory=384, vcpus=1, vif=[f"bridge={BR}"],
                        extra=f"console=ttyS0 xenia.ip=10.80.0.{i}/24")
        host.run("b1", f"dd if=/dev/zero of=/tmp/z bs=1M count={args.mib}")
        for r in range(args.runs):
            port = 5100 + r
            listen(host, "b2", port, out="/dev/null")
            g = timed(host, "b1", f"nc 10.80.0.2 {port} < /tmp/z")
            b = host_baseline(args.mib)
            guest.append(args.mib / g)
            base.append(args.mib / b)
            print(f"run {r + 1}: guest-to-guest {args.mib / g:.1f} MiB/s, "
                  f"host netns {args.mib / b:.1f} MiB/s", flush=True)
    finally:
        host.cleanup()
    mg, mb = median(guest), median(base)
    print(f"median: guests {mg:.1f} MiB/s, host {mb:.1f} MiB/s, ratio {mg / mb:.3f}")
    if not args.no_write:
        rows = "\n".join(f"| {i + 1} | {g:.1f} | {b:.1f} |"
                         for i, (g, b) in enumerate(zip(guest, base, strict=True)))
        write_section("Network: guest-to-guest TCP (bench/net.py)", f"""
Two tiny guests (1 vCPU, 384 MiB, virtio-net with offloads, taps on a Xenia bridge) move
a {args.mib} MiB file from tmpfs with busybox `nc` over TCP, timed by the sender guest's
clock. Baseline: the same `nc < file` between two network namespaces on a host bridge
(veth), file in /dev/shm.

| run | guest to guest (MiB/s) | host netns (MiB/s) |
|-----|------------------------|--------------------|
{rows}

**Median: guests {mg:.1f} MiB/s, host {mb:.1f} MiB/s, ratio {mg / mb:.3f}.** Under TCG
every guest instruction is emulated, so the guests' own TCP stacks are the limit, not the
bridge or the taps; with KVM the ratio is the one to watch.
""")


if __name__ == "__main__":
    main()

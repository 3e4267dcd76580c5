"""Metrics benchmark: how long a Prometheus scrape of a host with 50 domains takes.

50 PV domains of the tiny image, created paused (`xenia create -p`: QEMU runs, every
device attached, no guest CPU burnt; the counters are read from QEMU just the same), each
with a disk. GET /metrics over TCP with TLS and a `metrics` token, as Prometheus scrapes;
the baseline in the same run is GET /v1/stats (the same QMP and netlink reads, as JSON,
what `xenia top` fetches), so the ratio is what the Prometheus families add.

    sudo .venv/bin/python -m bench.metrics [--runs 20] [--domains 50] [--no-write]
"""

from __future__ import annotations

import json
import socket
import ssl
import time

import httpx
from tests.integration.harness import Host, Image

from bench.common import arg_parser, median, tiny_image, write_section

TARGET_MS = 100.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed_get(client: httpx.Client, url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    r = client.get(url)
    took = time.perf_counter() - t0
    r.raise_for_status()
    return took, r.content


def main() -> None:
    ap = arg_parser(runs=20)
    ap.add_argument("--domains", type=int, default=50)
    args = ap.parse_args()
    kernel, initrd = tiny_image()
    host = Host(Image(kernel=kernel, initrd=initrd))
    port = free_port()
    try:
        host.start_daemon(20.0, "--listen", f"127.0.0.1:{port}")
        for i in range(args.domains):
            disk = host.root / f"d{i}.raw"
            with open(disk, "wb") as f:
                f.truncate(8 << 20)
            host.xenia("create", "-p", str(host.write_cfg(
                f"m{i}", memory=64, vif=[], disk=[f"format=raw,vdev=xvda,target={disk}"])))
        token = host.xenia("host", "token", "create", "--name", "prom", "--scope",
                           "metrics,read").stdout.strip()
        # The listener's certificate is self-signed; the bench measures, it does not trust.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        base = f"https://127.0.0.1:{port}"
        with httpx.Client(base_url=base, verify=ctx,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            _, body = timed_get(client, "/metrics")  # warm-up (TLS session, QMP)
            series = sum(1 for line in body.decode().splitlines()
                         if line and not line.startswith("#"))
            scrape, stats = [], []
            for _ in range(args.runs):
                scrape.append(timed_get(client, "/metrics")[0] * 1000)
                stats.append(timed_get(client, "/v1/stats")[0] * 1000)
            rows = json.loads(client.get("/v1/stats").content)
        assert len(rows) == args.domains + 1, f"{len(rows)} rows for {args.domains} domains"
    finally:
        host.cleanup()
    s_med, j_med = median(scrape), median(stats)
    body_md = f"""
{args.domains} PV domains (tiny image, 64 MiB, one raw disk, no NIC), created paused. Median
of {args.runs} requests each over TCP with TLS and a token, client in the same machine;
{series} samples a scrape. Baseline: GET /v1/stats (the same counters as JSON).

| request | median ms | max ms | ratio |
|---|---|---|---|
| GET /metrics | {s_med:.1f} | {max(scrape):.1f} | {s_med / j_med:.2f} |
| GET /v1/stats | {j_med:.1f} | {max(stats):.1f} | 1.00 |

Target: a scrape within {TARGET_MS:.0f} ms ({"met" if s_med <= TARGET_MS else "NOT met"}).
"""
    print(body_md)
    if not args.no_write:
        write_section("Metrics: a scrape of 50 domains (bench/metrics.py)", body_md)


if __name__ == "__main__":
    main()

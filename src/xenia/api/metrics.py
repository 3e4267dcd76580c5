"""GET /metrics: the host and its domains in Prometheus' text format (scope `metrics`).

One scrape is one DomainViews.stats() sample (the counters `xenia top` shows, with the
per-disk and per-NIC ones), turned into metric families by `families()`, a plain function
of the sample, and written by prometheus_client's own exposition code. Nothing is kept
between scrapes: counters are QEMU's, the kernel's and the cgroups', so a restarted xeniad
goes on counting where they are (a domain restarted starts again at 0, which Prometheus'
rate() reads as a counter reset).

Per-domain series carry only `domain` and `uuid` (and `disk` or `interface`); which host
runs the domain is in the separate `xenia_domain_info` series, so a migration does not
start new series for the counters. docs/metrics.md maps the names to the libvirt exporter's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from xenia.api.access import HOST_ROW, Acc
from xenia.api.deps import Views
from xenia.host.views import SUSPENDED
from xenia.hostos import hostinfo
from xenia.store.state import CRASHED, DYING, PAUSED, RUNNING, SHUTDOWN

router = APIRouter()

STATES = (RUNNING, PAUSED, SUSPENDED, SHUTDOWN, CRASHED, DYING)
DOM = ("domain", "uuid")

# (metric suffix, help, stats key) of a disk (drivers/qemu.py's disk_io rows).
DISK_COUNTERS = (
    ("block_read_bytes", "Bytes read from the disk by the guest", "rd_bytes"),
    ("block_write_bytes", "Bytes written to the disk by the guest", "wr_bytes"),
    ("block_read_requests", "Read requests the guest made of the disk", "rd_operations"),
    ("block_write_requests", "Write requests the guest made of the disk", "wr_operations"),
)
# (metric suffix, help, stats key) of a NIC, from the guest's side (nic_io rows).
NIC_COUNTERS = (
    ("network_receive_bytes", "Bytes the guest received on the NIC", "rx_bytes"),
    ("network_transmit_bytes", "Bytes the guest sent on the NIC", "tx_bytes"),
    ("network_receive_packets", "Packets the guest received on the NIC", "rx_packets"),
    ("network_transmit_packets", "Packets the guest sent on the NIC", "tx_packets"),
    ("network_receive_errors", "Receive errors on the NIC", "rx_errors"),
    ("network_transmit_errors", "Transmit errors on the NIC", "tx_errors"),
    ("network_receive_drops", "Packets dropped on their way to the guest", "rx_dropped"),
    ("network_transmit_drops", "Packets from the guest dropped", "tx_dropped"),
)


class ClusterFacts(Protocol):
    """The seam for the cluster (branches etcd/clusterops): an object at
    `app.state.cluster_metrics` with these adds the HA series; without one they are absent
    (a single host has no lease and fails nothing over)."""

    def ha_failovers(self) -> int: ...

    def lease_healthy(self) -> bool: ...


def families(rows: Iterable[dict[str, Any]], host: str, *, free_bytes: int,
             total_bytes: int, migrations: dict[tuple[str, str], int],
             cluster: ClusterFacts | None = None) -> list[Metric]:
    """The metric families of one stats sample (DomainViews.stats rows, Domain-0's
    included and skipped here: the host has its own series)."""
    m: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}

    # Each family is made once, here, and kept by name for the per-device loops below.
    def gauge(name: str, doc: str, labels: Iterable[str]) -> GaugeMetricFamily:
        fam = m[name] = GaugeMetricFamily(f"xenia_{name}", doc, labels=list(labels))
        return fam

    def counter(name: str, doc: str, labels: Iterable[str]) -> CounterMetricFamily:
        fam = m[name] = CounterMetricFamily(f"xenia_{name}", doc, labels=list(labels))
        return fam

    # Declared up front so an empty host still shows each family's HELP and TYPE.
    info = gauge("domain_info", "The domain's host and type (always 1)",
                 (*DOM, "host", "type"))
    state = gauge("domain_state", "1 for the domain's current state", (*DOM, "state"))
    cpu = counter("domain_cpu_seconds", "CPU time the domain used (all vCPUs)", DOM)
    vcpus = gauge("domain_vcpus", "vCPUs of the domain", DOM)
    mem_max = gauge("domain_memory_maximum_bytes", "Memory the domain may grow to (maxmem)",
                    DOM)
    mem_cur = gauge("domain_memory_current_bytes",
                    "Memory the domain has now (balloon size; a container's usage)", DOM)
    for suffix, doc, _ in DISK_COUNTERS:
        counter(f"domain_{suffix}", doc, (*DOM, "disk"))
    for suffix, doc, _ in NIC_COUNTERS:
        counter(f"domain_{suffix}", doc, (*DOM, "interface"))
    by_state: dict[str, int] = {str(s): 0 for s in STATES}
    for row in rows:
        if row.get("name") == HOST_ROW:
            continue
        dom = [str(row.get("name")), str(row.get("uuid", ""))]
        info.add_metric([*dom, host, str(row.get("type", ""))], 1)
        st = str(row.get("state", ""))
        by_state[st] = by_state.get(st, 0) + 1
        state.add_metric([*dom, st], 1)
        cpu.add_metric(dom, float(row.get("cpu_time", 0.0)))
        vcpus.add_metric(dom, int(row.get("vcpus", 0)))
        mem_max.add_metric(dom, int(row.get("maxmem_kib", 0)) * 1024)
        mem_cur.add_metric(dom, int(row.get("memory_kib", 0)) * 1024)
        for disk in row.get("disk_io", ()):
            for suffix, _, key in DISK_COUNTERS:
                m[f"domain_{suffix}"].add_metric([*dom, str(disk["vdev"])], disk.get(key, 0))
        for nic in row.get("nic_io", ()):
            for suffix, _, key in NIC_COUNTERS:
                m[f"domain_{suffix}"].add_metric([*dom, str(nic["device"])], nic.get(key, 0))
    doms = gauge("host_domains", "Domains on this host by state", ("host", "state"))
    for st, n in by_state.items():
        doms.add_metric([host, st], n)
    gauge("host_memory_free_bytes", "Memory available for new domains (MemAvailable)",
          ("host",)).add_metric([host], free_bytes)
    gauge("host_memory_total_bytes", "Memory of the host", ("host",)).add_metric(
        [host], total_bytes)
    mig = counter("host_migrations", "Live migrations since xeniad started, by direction "
                  "and result", ("host", "direction", "result"))
    for (direction, result), n in sorted(migrations.items()):
        mig.add_metric([host, direction, result], n)
    if cluster is not None:
        counter("host_ha_failovers", "Domains this host restarted for a failed host",
                ("host",)).add_metric([host], cluster.ha_failovers())
        gauge("host_lease_healthy", "1 while this host's etcd lease is renewed in time",
              ("host",)).add_metric([host], 1 if cluster.lease_healthy() else 0)
    return list[Metric](m.values())


def migration_counts(request: Request) -> dict[tuple[str, str], int]:
    """Finished migrations of this daemon's life: ("out"|"in", result) -> count."""
    engine = request.app.state.engine
    out: dict[tuple[str, str], int] = {}
    for job in engine.sender.jobs.values():
        if job.finished is not None:
            key = ("out", job.status)
            out[key] = out.get(key, 0) + 1
    for inc in engine.receiver.jobs.values():
        if inc.state in ("committed", "aborted", "failed"):
            key = ("in", "completed" if inc.state == "committed" else inc.state)
            out[key] = out.get(key, 0) + 1
    return out


class _Sample:
    """What generate_latest() wants of a registry: collect()."""

    def __init__(self, fams: list[Metric]) -> None:
        self.fams = fams

    def collect(self) -> Iterator[Metric]:
        return iter(self.fams)


@router.get("/metrics")
async def metrics(request: Request, v: Views, a: Acc) -> Response:
    started = time.monotonic()
    rows = a.visible(await v.stats())
    mem = hostinfo.meminfo()
    fams = families(
        rows, str(hostinfo.describe()["host"]),
        free_bytes=mem.get("MemAvailable", mem.get("MemFree", 0)) * 1024,
        total_bytes=mem.get("MemTotal", 0) * 1024,
        migrations=migration_counts(request),
        cluster=getattr(request.app.state, "cluster_metrics", None))
    took = GaugeMetricFamily("xenia_scrape_duration_seconds",
                             "How long xeniad took to gather this scrape")
    took.add_metric([], time.monotonic() - started)
    fams.append(took)
    return Response(generate_latest(_Sample(fams)),  # type: ignore[arg-type]
                    media_type=CONTENT_TYPE_LATEST)

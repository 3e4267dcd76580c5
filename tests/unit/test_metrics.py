"""api/metrics.py: a stats sample -> Prometheus families (names, labels, units)."""

from __future__ import annotations

from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from xenia.api.metrics import _Sample, families


def _row(name: str, uuid: str, state: str = "running") -> dict[str, Any]:
    return {
        "name": name, "uuid": uuid, "state": state, "type": "pvh", "cpu_time": 12.5,
        "vcpus": 2, "maxmem_kib": 256 * 1024, "memory_kib": 128 * 1024,
        "disk_io": [{"vdev": "xvda", "rd_bytes": 4096, "wr_bytes": 8192,
                     "rd_operations": 1, "wr_operations": 2}],
        "nic_io": [{"devid": "0", "device": "vif3.0", "rx_bytes": 10, "tx_bytes": 20,
                    "rx_packets": 1, "tx_packets": 2, "rx_errors": 0, "tx_errors": 0,
                    "rx_dropped": 3, "tx_dropped": 0}],
    }


class _Cluster:
    def ha_failovers(self) -> int:
        return 4

    def lease_healthy(self) -> bool:
        return False


def _scrape(rows: list[dict[str, Any]], cluster: Any = None) -> dict[str, dict[str, Any]]:
    fams = families(rows, "h1", free_bytes=1 << 30, total_bytes=4 << 30,
                    migrations={("out", "completed"): 2}, cluster=cluster)
    text = generate_latest(_Sample(fams)).decode()  # type: ignore[arg-type]
    out: dict[str, dict[str, Any]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
            out[key] = {"value": s.value, "type": fam.type}
    return out


def test_domain_series_carry_domain_and_uuid_only_and_follow_units() -> None:
    got = _scrape([{"name": "Domain-0"}, _row("web", "u1"), _row("db", "u2", "paused")])
    assert got["xenia_domain_cpu_seconds_total{domain=web,uuid=u1}"] == {
        "value": 12.5, "type": "counter"}
    assert got["xenia_domain_memory_current_bytes{domain=web,uuid=u1}"]["value"] == 128 << 20
    assert got["xenia_domain_memory_maximum_bytes{domain=db,uuid=u2}"]["value"] == 256 << 20
    assert got["xenia_domain_block_write_bytes_total{disk=xvda,domain=web,uuid=u1}"][
        "value"] == 8192
    assert got["xenia_domain_block_read_requests_total{disk=xvda,domain=db,uuid=u2}"][
        "value"] == 1
    assert got["xenia_domain_network_receive_drops_total{domain=web,interface=vif3.0,"
               "uuid=u1}"]["value"] == 3
    # The host only in the info series: a migration changes that one series only.
    assert got["xenia_domain_info{domain=web,host=h1,type=pvh,uuid=u1}"]["value"] == 1
    assert not [k for k in got if k.startswith("xenia_domain_cpu") and "host=" in k]
    assert not [k for k in got if "Domain-0" in k]


def test_host_series_count_states_memory_migrations() -> None:
    got = _scrape([_row("web", "u1"), _row("db", "u2", "paused")])
    assert got["xenia_host_domains{host=h1,state=running}"]["value"] == 1
    assert got["xenia_host_domains{host=h1,state=paused}"]["value"] == 1
    assert got["xenia_host_domains{host=h1,state=crashed}"]["value"] == 0
    assert got["xenia_host_memory_free_bytes{host=h1}"]["value"] == 1 << 30
    assert got["xenia_host_migrations_total{direction=out,host=h1,result=completed}"][
        "value"] == 2
    # No cluster on this host: no HA series rather than made-up zeros.
    assert not [k for k in got if "lease" in k or "failover" in k]


def test_cluster_seam_adds_the_ha_series() -> None:
    got = _scrape([], _Cluster())
    assert got["xenia_host_ha_failovers_total{host=h1}"]["value"] == 4
    assert got["xenia_host_lease_healthy{host=h1}"]["value"] == 0

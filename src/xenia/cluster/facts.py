"""host_facts() and domain_rows(): what a member publishes about itself to etcd.

- hosts/<host>: the facts placement and `cluster status` read (memory, accelerator, CPU
  model, networks, pools, domain count);
- view/<host>/<uuid>: one row per domain for the cluster-wide `xenia list`.

Blocking (the network manager and /proc): call from a thread.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import xenia
from xenia.engine import Engine
from xenia.errors import XeniaError
from xenia.host.views import state_letters
from xenia.hostos import hostinfo
from xenia.store.state import LIVE

# No CPU time nor the running/blocked letter: they change every second, and a row is
# written again only when it changes.
ROW_FIELDS = ("name", "uuid", "domid", "type", "state", "memory", "vcpus")


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def committed_mib(engine: Engine) -> int:
    """MiB given to this host's running or paused domains."""
    return sum(r.config.memory for r in engine.store.list() if r.state in LIVE)


def host_facts(engine: Engine, name: str, address: str, api: str) -> dict[str, Any]:
    info = engine.views.host_info()
    total = hostinfo.total_mib()
    committed = committed_mib(engine)
    bridges: set[str] = set()
    networks: list[str] = []
    try:
        for n in engine.network.list_networks(include_host=True):
            bridges.update(str(x) for x in (n.get("name"), n.get("bridge")) if x)
            if n.get("type") != "host":
                networks.append(str(n["name"]))
    except XeniaError:
        pass  # shown as "no networks": placement then refuses domains with vifs here
    pools = [{"name": p.name, "location": p.location, "state": p.state}
             for p in engine.storage.list_pools()]
    return {
        "host": name, "address": address, "api": api,
        "total_mib": total, "committed_mib": committed,
        "free_mib": total - committed, "available_mib": hostinfo.available_mib(),
        "accel": info.get("accel", ""), "cpu_model": cpu_model(),
        "cpus": hostinfo.cpu_count(), "networks": sorted(networks),
        "bridges": sorted(bridges), "pools": pools,
        "domains": sum(1 for r in engine.store.list()),
        "version": xenia.__version__, "updated": time.time(),
    }


def domain_rows(engine: Engine, name: str) -> list[dict[str, Any]]:
    """This host's domains as cluster-wide list rows (Domain-0 is not one)."""
    rows = []
    for rec in engine.store.list():
        d = engine.views.describe(rec)
        row = {k: d[k] for k in ROW_FIELDS}
        row["state"] = str(row["state"])
        row["state_letters"] = state_letters(rec.state, True)
        row["host"] = name
        rows.append(row)
    return rows

"""The store documents of replicated volumes (see storage/replicas.py and
migration/replication.py), and how a volume shows them."""

from __future__ import annotations

from typing import Any

from xenia.store.base import Store

# On the primary: where a volume's copy is, its PSK and its last seen state.
REPLICA_KIND = "replica"
# On the replica host: a copy it keeps and exports for a primary.
EXPORT_KIND = "replica-export"


def export_key(pool: str, volume: str) -> str:
    return f"{pool}.{volume}"


def replica_view(store: Store, pool: str, volume: str) -> dict[str, Any] | None:
    """What `volume info` shows of a volume's replication (no secret), or None."""
    key = export_key(pool, volume)
    rec = store.obj_get(REPLICA_KIND, key)
    if rec is not None:
        return {"role": "primary", "host": rec.get("host"), "state": rec.get("state"),
                "progress": rec.get("progress"), "error": rec.get("error")}
    exp = store.obj_get(EXPORT_KIND, key)
    if exp is not None:
        return {"role": "replica", "primary": exp.get("primary"), "port": exp.get("port")}
    return None

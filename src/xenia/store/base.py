"""The state store interface (xenstore's place): SQLite on one host, etcd in a cluster.

Records are written before they are acted on, so a crash at any point leaves a record
that the next xeniad can reconcile with what is really running.
"""

from __future__ import annotations

import builtins
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol

from xenia.config.model import DomainConfig
from xenia.store import schema
from xenia.store.state import DomainState


@dataclass
class DomainRecord:
    uuid: str
    name: str
    domid: int
    config: DomainConfig
    # Stored as its string; `xenia list` maps it to xl's r b p s c d.
    state: DomainState = DomainState.CREATING
    created_at: float = 0.0
    started_at: float = 0.0
    # Runtime facts: accel, machine, QEMU version, pid, generated MACs, ...
    runtime: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The stored shape, stamped with its schema version (store/schema.py); save files
        and migration streams carry it too."""
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        d[schema.KEY] = schema.DOMAIN_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DomainRecord:
        """From the stored shape of this or any older version (upgraded on the way); a
        newer version's is refused (NotSupported)."""
        d = schema.upgrade_domain(d)
        del d[schema.KEY]
        d["config"] = DomainConfig.from_dict(d["config"])
        d["state"] = DomainState(d.get("state", DomainState.CREATING))
        return cls(**d)


class Store(Protocol):
    def get(self, uuid: str) -> DomainRecord | None: ...

    def list(self) -> list[DomainRecord]: ...

    def put(self, rec: DomainRecord) -> None:
        """Insert or replace; raises AlreadyExists if another record has the name or domid."""

    def delete(self, uuid: str) -> None: ...

    def next_domid(self) -> int:
        """A domid never handed out before on this host (xl never reuses them either)."""

    # Other objects (pools, volumes, networks, peer hosts): JSON documents by kind + name.
    def obj_get(self, kind: str, name: str) -> dict[str, Any] | None: ...

    def obj_list(self, kind: str) -> builtins.list[dict[str, Any]]: ...

    def obj_put(self, kind: str, name: str, data: dict[str, Any], *, create: bool = False) -> None:
        """Store a document; with create=True, AlreadyExists if the name is taken."""

    def obj_delete(self, kind: str, name: str) -> None: ...

    def close(self) -> None: ...

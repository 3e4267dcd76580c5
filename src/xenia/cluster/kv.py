"""The values the etcd client speaks in: KV, Event, the parts of a transaction.

etcd's JSON gateway sends keys and values base64-encoded and 64-bit numbers as strings,
and leaves out every field whose value is zero or false (proto3 JSON); these classes hide
both, so the rest of Xenia sees plain str keys, bytes values and ints.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: str) -> str:
    """The range_end that selects every key starting with `prefix` (etcd's rule: the
    prefix with its last byte incremented). Xenia's keys are ASCII below 0x7f."""
    raw = bytearray(prefix.encode())
    if not raw or raw[-1] >= 0x7F:
        raise ValueError(f"not a usable key prefix: {prefix!r}")
    raw[-1] += 1
    return raw.decode()


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KV:
        return cls(key=unb64(d.get("key")).decode(), value=unb64(d.get("value")),
                   create_revision=int(d.get("create_revision", 0)),
                   mod_revision=int(d.get("mod_revision", 0)),
                   version=int(d.get("version", 0)), lease=int(d.get("lease", 0)))

    @property
    def text(self) -> str:
        return self.value.decode()


@dataclass(frozen=True)
class Event:
    """One change seen by a watch: kind "put" or "delete"; a delete's kv has no value and
    its mod_revision is the revision of the delete."""

    kind: str
    kv: KV
    prev: KV | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Event:
        prev = d.get("prev_kv")
        return cls(kind="delete" if d.get("type") == "DELETE" else "put",
                   kv=KV.from_json(d["kv"]), prev=KV.from_json(prev) if prev else None)


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction on one key. target: "mod" (mod_revision), "create"
    (create_revision; 0 means the key does not exist), "version", "value" or "lease"."""

    key: str
    target: str
    value: int | bytes
    result: str = "EQUAL"

    _FIELDS = {"mod": ("MOD", "mod_revision"), "create": ("CREATE", "create_revision"),
               "version": ("VERSION", "version"), "value": ("VALUE", "value"),
               "lease": ("LEASE", "lease")}

    def to_json(self) -> dict[str, Any]:
        target, field = self._FIELDS[self.target]
        value: Any = b64(self.value) if isinstance(self.value, bytes) else self.value
        return {"key": b64(self.key), "target": target, "result": self.result, field: value}

    @classmethod
    def mod(cls, key: str, revision: int) -> Compare:
        return cls(key, "mod", revision)

    @classmethod
    def created(cls, key: str, revision: int) -> Compare:
        return cls(key, "create", revision)

    @classmethod
    def absent(cls, key: str) -> Compare:
        return cls(key, "create", 0)


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0

    def to_json(self) -> dict[str, Any]:
        req: dict[str, Any] = {"key": b64(self.key), "value": b64(self.value)}
        if self.lease:
            req["lease"] = self.lease
        return {"request_put": req}


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False

    def to_json(self) -> dict[str, Any]:
        req = {"key": b64(self.key)}
        if self.prefix:
            req["range_end"] = b64(prefix_end(self.key))
        return {"request_delete_range": req}


@dataclass(frozen=True)
class Get:
    key: str

    def to_json(self) -> dict[str, Any]:
        return {"request_range": {"key": b64(self.key)}}


Op = Put | Delete | Get


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    # The KVs the branch's Get ops found, in order (the other ops answer nothing useful).
    found: list[KV]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TxnResult:
        found: list[KV] = []
        for resp in d.get("responses", []):
            rng = resp.get("response_range")
            if rng is not None:
                found.extend(KV.from_json(kv) for kv in rng.get("kvs", []))
        return cls(succeeded=bool(d.get("succeeded", False)),
                   revision=int(d.get("header", {}).get("revision", 0)), found=found)

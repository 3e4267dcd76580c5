"""Stored documents carry a schema version; older ones are upgraded on read, newer refused."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from xenia.config.model import DomainConfig
from xenia.devices.layout import Layout
from xenia.errors import InvalidConfig, NotSupported
from xenia.store import schema
from xenia.store.base import DomainRecord
from xenia.store.sqlite import SqliteStore

UUID = "0b6f2c1e-5d4a-4c3b-9e8f-7a6b5c4d3e2f"

# A domain record exactly as xeniad wrote it before versions existed (version 1): no
# "schema" key, and the root port count under runtime "nports".
VERSION_1 = {
    "uuid": UUID, "name": "old", "domid": 4, "state": "running",
    "created_at": 1700000000.0, "started_at": 1700000001.0,
    "config": DomainConfig(name="old", kernel="/k").to_dict(),
    "runtime": {"pid": 4242, "accel": "tcg", "machine": "pc-q35-10.0", "nports": 10,
                "slots": {"disk-xvda": "rp0", "nic0": "rp1"}, "taps": {"0": "vif4.0"}},
}


def test_version_1_domain_is_upgraded() -> None:
    doc = json.loads(json.dumps(VERSION_1))
    up = schema.upgrade_domain(doc)
    assert up[schema.KEY] == schema.DOMAIN_VERSION == 2
    assert up["runtime"]["root_ports"] == 10 and "nports" not in up["runtime"]
    # Everything else as it was, and the caller's document untouched.
    rest = {k: v for k, v in up["runtime"].items() if k != "root_ports"}
    assert rest == {k: v for k, v in VERSION_1["runtime"].items() if k != "nports"}
    assert doc == VERSION_1
    # Idempotent: an upgraded record goes through unchanged.
    assert schema.upgrade_domain(up) == up


def test_version_1_record_reads_with_its_layout() -> None:
    rec = DomainRecord.from_dict(VERSION_1)
    layout = Layout.from_runtime(rec.runtime)
    assert layout.root_ports == 10 and layout.slots == {"disk-xvda": "rp0", "nic0": "rp1"}
    out = rec.to_dict()
    assert out[schema.KEY] == 2 and out["runtime"]["root_ports"] == 10
    assert DomainRecord.from_dict(out) == rec


def test_version_1_without_runtime_facts() -> None:
    # A record stored while still being built has no root ports yet.
    doc = {**VERSION_1, "state": "creating", "runtime": {}}
    assert DomainRecord.from_dict(doc).runtime == {}


def test_newer_record_is_refused_not_mangled() -> None:
    doc = {**VERSION_1, schema.KEY: schema.DOMAIN_VERSION + 1,
           "runtime": {"future_field": 1}}
    with pytest.raises(NotSupported, match=r"record of domain 'old' .*a newer xeniad wrote "
                       r"it \(schema version 3; this one knows up to 2\)"):
        DomainRecord.from_dict(doc)
    with pytest.raises(InvalidConfig, match="not a version number"):
        DomainRecord.from_dict({**VERSION_1, schema.KEY: "2"})


def test_sqlite_upgrades_an_old_row_and_writes_the_new_shape(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "x.db")
    store.close()
    db = sqlite3.connect(tmp_path / "x.db")
    db.execute("INSERT INTO domains(uuid, name, domid, record) VALUES(?,?,?,?)",
               (UUID, "old", 4, json.dumps(VERSION_1)))
    db.commit()
    store = SqliteStore(tmp_path / "x.db")
    rec = store.get(UUID)
    assert rec is not None and rec.runtime["root_ports"] == 10
    assert [r.uuid for r in store.list()] == [UUID]
    store.put(rec)
    raw = json.loads(db.execute("SELECT record FROM domains").fetchone()[0])
    assert raw[schema.KEY] == 2 and raw["runtime"]["root_ports"] == 10
    assert "nports" not in raw["runtime"]
    store.close()
    db.close()


def test_objects_carry_a_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SqliteStore(tmp_path / "x.db")
    store.obj_put("pool", "p", {"name": "p", "path": "/srv"})
    db = sqlite3.connect(tmp_path / "x.db")
    raw = json.loads(db.execute("SELECT data FROM objects").fetchone()[0])
    assert raw == {"name": "p", "path": "/srv", schema.KEY: 1}
    assert store.obj_get("pool", "p") == {"name": "p", "path": "/srv"}  # callers never see it
    # Documents written before versions existed read as version 1.
    db.execute("INSERT INTO objects(kind, name, data) VALUES('pool', 'q', ?)",
               (json.dumps({"name": "q", "dir": "/old"}),))
    db.commit()

    def rename_dir(doc: dict) -> None:  # type: ignore[type-arg]
        doc["path"] = doc.pop("dir")

    # A later release renaming a pool field: old rows upgrade, its own rows do not.
    monkeypatch.setitem(schema.OBJECT_STEPS, "pool", (rename_dir,))
    store.obj_put("pool", "p", {"name": "p", "path": "/srv"})
    assert store.obj_list("pool") == [{"name": "p", "path": "/srv"},
                                      {"name": "q", "path": "/old"}]
    # ...and this release refuses a row written by that one.
    monkeypatch.setitem(schema.OBJECT_STEPS, "pool", ())
    with pytest.raises(NotSupported, match="stored pool 'p': a newer xeniad wrote it"):
        store.obj_get("pool", "p")
    store.close()
    db.close()

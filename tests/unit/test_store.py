from __future__ import annotations

from pathlib import Path

import pytest

from xenia.config.model import DiskSpec, DomainConfig, RateLimit, VifSpec
from xenia.errors import AlreadyExists
from xenia.store.base import DomainRecord
from xenia.store.sqlite import SqliteStore


def rec(name: str, uuid: str, domid: int) -> DomainRecord:
    cfg = DomainConfig(name=name, kernel="/k", disks=[DiskSpec(vdev="xvda", target="/d")],
                       vifs=[VifSpec(mac="00:16:3e:00:00:01", rate=RateLimit(1000, 50000))])
    return DomainRecord(uuid=uuid, name=name, domid=domid, config=cfg, state="running",
                        runtime={"pid": 1})


def test_round_trip_and_persistence(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "x.db")
    r = rec("a", "u1", s.next_domid())
    s.put(r)
    s.close()
    s2 = SqliteStore(tmp_path / "x.db")
    got = s2.get("u1")
    assert got == r
    assert got is not None and got.config.vifs[0].rate == RateLimit(1000, 50000)


def test_unique_name_and_domid(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "x.db")
    s.put(rec("a", "u1", 1))
    with pytest.raises(AlreadyExists):
        s.put(rec("a", "u2", 2))
    with pytest.raises(AlreadyExists):
        s.put(rec("b", "u3", 1))
    s.put(rec("a2", "u1", 1))  # update in place
    assert [r.name for r in s.list()] == ["a2"]


def test_domids_never_reused(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "x.db")
    ids = [s.next_domid() for _ in range(3)]
    s.close()
    assert SqliteStore(tmp_path / "x.db").next_domid() == ids[-1] + 1
    assert ids == [1, 2, 3]

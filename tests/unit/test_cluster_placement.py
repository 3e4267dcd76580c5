"""Placement (cluster/placement.py): the choice, and the refusal that names each member."""

from __future__ import annotations

from typing import Any

import pytest

from xenia.cluster.node import join_token, parse_join_token
from xenia.cluster.placement import Candidate, Needs, place, reject_reason
from xenia.config.model import DiskSpec, DomainConfig, VifSpec
from xenia.errors import InvalidConfig, NotFound, NotSupported

POOLS = {"default": "/var/lib/xenia/pools/default", "shared": "/mnt/shared"}


def facts(free: int, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"free_mib": free, "available_mib": free, "accel": "tcg",
                            "cpu_model": "Xeon", "bridges": ["xenbr0"],
                            "pools": [{"name": "shared", "location": "/mnt/shared"}]}
    return {**base, **kw}


def needs(memory: int = 256, **kw: Any) -> Needs:
    return Needs(name="web", memory=memory, **kw)


def test_most_free_memory_wins_and_ties_go_to_the_first_name() -> None:
    cands = [Candidate("b", facts(1000)), Candidate("a", facts(4000)),
             Candidate("c", facts(4000))]
    assert place(needs(), cands).host == "a"
    assert place(needs(), [Candidate("h2", facts(500)), Candidate("h1", facts(500))]).host == "h1"


def test_reserved_memory_counts_so_parallel_placements_spread() -> None:
    a, b = Candidate("a", facts(1000)), Candidate("b", facts(900))
    assert place(needs(200), [a, b]).host == "a"
    a = Candidate("a", facts(1000), reserved=200)
    assert place(needs(200), [a, b]).host == "b"


def test_refusal_names_every_member_and_its_reason() -> None:
    cands = [
        Candidate("small", facts(100)),
        Candidate("busy", facts(8000, available_mib=50)),
        Candidate("maint", facts(8000), maintenance=True),
        Candidate("dead", facts(8000), alive=False),
        Candidate("fenced", facts(8000), fenced=True),
        Candidate("nobr", facts(8000, bridges=[])),
        Candidate("silent", {}),
    ]
    with pytest.raises(NotSupported) as e:
        place(needs(256, bridges=("xenbr0",)), cands)
    msg = e.value.message
    assert msg.startswith("Failed to place 'web': no cluster member can run it")
    assert "small: 256 MiB needed, 100 MiB free" in msg
    assert "busy: 256 MiB needed, only 50 MiB available now" in msg
    assert "maint: it is in maintenance" in msg
    assert "dead: its lease is gone" in msg
    assert "fenced: it is fenced" in msg
    assert "nobr: network xenbr0 not present" in msg
    assert "silent: it has published no facts" in msg


def test_accelerator_cpu_model_storage() -> None:
    kvm = Candidate("kvm", facts(1000, accel="kvm", cpu_model="EPYC"))
    tcg = Candidate("tcg", facts(2000))
    assert place(needs(accel="kvm"), [kvm, tcg]).host == "kvm"
    assert "accel=kvm asked for, it runs tcg" in (reject_reason(tcg, needs(accel="kvm")) or "")
    why = reject_reason(kvm, needs(cpu_model="Xeon"))
    assert why is not None and "CPU model EPYC differs" in why
    pooled = needs(pools=("shared=/mnt/shared", "default=/var/lib/xenia/pools/default"))
    why = reject_reason(tcg, pooled)
    assert why == "storage not reachable: no pool default at /var/lib/xenia/pools/default"
    unseen = Candidate("x", facts(1000), sees=frozenset({"/a"}))
    assert reject_reason(unseen, needs(paths=("/a", "/b"))) == \
        "storage not reachable: /b not found there"


def test_wanted_host() -> None:
    cands = [Candidate("a", facts(4000)), Candidate("b", facts(100))]
    assert place(needs(50), cands, wanted="b").host == "b"
    with pytest.raises(NotSupported, match="on host 'b': 256 MiB needed, 100 MiB free"):
        place(needs(256), cands, wanted="b")
    with pytest.raises(NotFound, match="'zz': it is no cluster member"):
        place(needs(), cands, wanted="zz")


def test_needs_of_a_config() -> None:
    cfg = DomainConfig(name="db", memory=512, accel="kvm", kernel="/boot/vmlinuz", disks=[
        DiskSpec(vdev="xvda", target="/mnt/shared/db.qcow2"),
        DiskSpec(vdev="xvdb", target="/srv/data.img"),
        DiskSpec(vdev="hdc", target=None, format="empty", devtype="cdrom"),
    ], vifs=[VifSpec(bridge="lan0"), VifSpec()])
    n = Needs.of(cfg, POOLS)
    assert n.memory == 512 and n.accel == "kvm"
    assert n.pools == ("shared=/mnt/shared",)
    assert n.paths == ("/srv/data.img", "/boot/vmlinuz")
    assert n.bridges == ("lan0", "xenbr0")


def test_join_token_round_trip_and_refusal() -> None:
    fp = "AB:" * 31 + "AB"
    tok = join_token(fp, "xenia_secret-_x")
    assert tok.startswith("XJ1.abab")
    assert parse_join_token(tok) == (fp, "xenia_secret-_x")
    with pytest.raises(InvalidConfig, match="not one `xenia cluster token` printed"):
        parse_join_token("xenia_secret")

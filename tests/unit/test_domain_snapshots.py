"""Snapshot references, clone identities (MAC, the console line) without a guest."""

from __future__ import annotations

import re

import pytest

from xenia.config.model import DomainConfig, VifSpec
from xenia.errors import InvalidConfig
from xenia.migration.clones import identity_line, new_mac
from xenia.migration.snapshots import split_ref
from xenia.store.base import DomainRecord


def test_split_ref() -> None:
    assert split_ref("tmpl@base", "x") == ("tmpl", "base")
    assert split_ref("tmpl/base", "x") == ("tmpl", "base")
    for bad in ("tmpl", "@base", "tmpl@", ""):
        with pytest.raises(InvalidConfig, match="DOMAIN@SNAPSHOT"):
            split_ref(bad, "x")


def test_new_macs_are_xen_unicast_and_differ() -> None:
    macs = {new_mac() for _ in range(200)}
    assert len(macs) == 200
    for mac in macs:
        assert re.fullmatch(r"00:16:3e:[0-7][0-9a-f](:[0-9a-f]{2}){2}", mac), mac


def test_identity_line_sets_name_uuid_macs_and_ends_in_a_marker() -> None:
    cfg = DomainConfig(name="c7", vifs=[VifSpec(mac="00:16:3e:01:02:03"),
                                        VifSpec(mac="00:16:3e:04:05:06")])
    rec = DomainRecord(uuid="1b4e28ba-2fa1-11d2-883f-0016d3cca427", name="c7", domid=3,
                       config=cfg)
    line = identity_line(rec, "tok")
    assert line.endswith("echo tok-$((40+2))\n") and line.count("\n") == 1
    assert "echo c7 >/proc/sys/kernel/hostname;" in line
    assert f"echo {rec.uuid} >/run/xenia/uuid" in line
    assert "ip link set dev eth1 address 00:16:3e:04:05:06" in line
    # The answer the caller waits for is not in the echoed input.
    assert "tok-42" not in line

"""Golden files of the generated documents other than QEMU argv (tests/unit/goldens.py;
regenerate with XENIA_UPDATE_GOLDEN=1 and review): a container's OCI config.json and a NAT
network's nftables batch, both exactly as they are handed to crun and `nft -j -f -`.
Every input is fixed; the host's architecture is passed in, not probed."""

from __future__ import annotations

import json
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from tests.unit.goldens import compare
from xenia.config.model import DomainConfig
from xenia.containers import spec
from xenia.containers.idmap import IdMap
from xenia.network import nft

UUID = "3c9a7e21-84b0-4d6f-a1e5-92f0b7c4d813"


def container_config() -> DomainConfig:
    return DomainConfig(name="web", type="container", memory=256, vcpus=2,
                        rootfs="/var/lib/xenia/images/rootfs/debian",
                        init="/sbin/init --log-level=info",
                        extra="xenia.ip=10.7.0.20/24 xenia.gw=10.7.0.1")


@pytest.mark.parametrize("extra_caps", [False, True], ids=["default", "cap-add"])
def test_container_config_json(extra_caps: bool, tmp_path: Path) -> None:
    cfg = container_config()
    for cpu in ("cpu0", "cpu1"):  # a fixed host sysfs: two CPUs with thermal_throttle
        (tmp_path / "devices/system/cpu" / cpu / "thermal_throttle").mkdir(parents=True)
    if extra_caps:  # capabilities that also open syscalls (Docker's profile does the same)
        cfg.cap_add = ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
        cfg.cap_drop = ["CAP_NET_RAW"]
    doc = spec.build_spec(cfg, uuid=UUID, rootfs=spec.MOUNT_BASE / UUID,
                          argv=spec.init_argv(cfg), idmap=IdMap(uid=1073741824, gid=1073741824),
                          machine="x86_64", sysfs=tmp_path)
    # As the container driver writes it.
    name = "container-cap-add.json" if extra_caps else "container.json"
    compare(name, json.dumps(doc, indent=2) + "\n")


def test_nat_network_nft_batch() -> None:
    batch = nft.ruleset("lab", "xenbr-lab", IPv4Network("10.7.0.0/24"))
    compare("nat-network.nft.json", json.dumps(batch, indent=2) + "\n")


def test_compare_shows_a_diff_and_regenerates(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from tests.unit import goldens

    monkeypatch.setattr(goldens, "GOLDEN", tmp_path)
    monkeypatch.delenv(goldens.REGENERATE, raising=False)
    with pytest.raises(AssertionError, match="no golden file"):
        goldens.compare("x.argv", "a\nb\n")
    (tmp_path / "x.argv").write_text("a\nb\n")
    goldens.compare("x.argv", "a\nb\n")
    with pytest.raises(AssertionError) as err:
        goldens.compare("x.argv", "a\nc\n")
    assert "-b\n+c\n" in str(err.value) and "--- golden/x.argv" in str(err.value)
    monkeypatch.setenv(goldens.REGENERATE, "1")
    goldens.compare("x.argv", "a\nc\n")
    assert (tmp_path / "x.argv").read_text() == "a\nc\n"

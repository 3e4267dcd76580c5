"""Networks without a kernel: names, MACs, subnets, rate -> tbf, nft and dnsmasq argv."""

from __future__ import annotations

import json
import re
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenia.config.model import RateLimit, VifSpec
from xenia.config.vifspec import parse_rate
from xenia.errors import InvalidConfig
from xenia.network import mac as macs
from xenia.network import nft, ratelimit
from xenia.network.dnsmasq import DnsmasqFiles, dnsmasq_argv
from xenia.network.manager import NetworkManager
from xenia.network.model import NetworkRecord
from xenia.network.names import check_ifname, tap_name, valid_ifname
from xenia.network.subnet import (
    Claim,
    dhcp_range,
    dhcp_size,
    first_overlap,
    gateway,
    parse_subnet,
    pick_free,
)
from xenia.paths import Paths


# -- names ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["xenbr0", "br-lan", "virbr0.10", "a", "A_b-c.d",
                                  "x" * 15, "0bridge", "_x"])
def test_valid_ifnames(name: str) -> None:
    assert valid_ifname(name)
    assert check_ifname(name, "bridge", "to test") == name


@pytest.mark.parametrize("name", ["", "x" * 16, "-br", ".br", "br/0", "br:0", "br 0", "all",
                                  "default", "br\n", "bré", "br$(x)", "a;b", "..", "."])
def test_invalid_ifnames(name: str) -> None:
    assert not valid_ifname(name)
    with pytest.raises(InvalidConfig, match=r"^Failed to test: invalid bridge"):
        check_ifname(name, "bridge", "to test")


def test_tap_name_follows_xl() -> None:
    assert tap_name(3, 0) == "vif3.0"
    assert tap_name(12345, 7) == "vif12345.7"
    assert tap_name(3, 0, "web0") == "web0"
    assert tap_name(3, 0, "") == "vif3.0"
    assert NetworkManager.tap_name(1, 2) == "vif1.2"


@pytest.mark.parametrize("vifname", ["x" * 16, "a/b", "-x", "vif 1"])
def test_tap_name_rejects_bad_vifname(vifname: str) -> None:
    with pytest.raises(InvalidConfig, match="invalid vifname"):
        tap_name(3, 0, vifname)


def test_tap_name_too_long_default() -> None:
    with pytest.raises(InvalidConfig):
        tap_name(10**12, 10**3)


# -- MACs ----------------------------------------------------------------------------------
def test_generate_mac_is_xen_oui_and_libxl_range() -> None:
    seen = set()
    for _ in range(200):
        m = NetworkManager.generate_mac()
        assert re.fullmatch(r"00:16:3e:[0-7][0-9a-f]:[0-9a-f]{2}:[0-9a-f]{2}", m), m
        assert macs.check_guest_mac(m) == m
        seen.add(m)
    assert len(seen) > 190  # random, not a counter


@pytest.mark.parametrize("raw,norm", [
    ("00:16:3E:0A:0b:0C", "00:16:3e:0a:0b:0c"),
    ("0-16-3e-a-b-c", "00:16:3e:0a:0b:0c"),
    ("aa:bb:cc:dd:ee:ff", "aa:bb:cc:dd:ee:ff"),
])
def test_normalize_mac(raw: str, norm: str) -> None:
    assert macs.normalize_mac(raw) == norm


@pytest.mark.parametrize("bad", ["", "00:16:3e:0a:0b", "00:16:3e:0a:0b:0c:0d", "zz:16:3e:0a:0b:0c",
                                 "001:16:3e:0a:0b:0c", "00163e0a0b0c"])
def test_normalize_mac_rejects(bad: str) -> None:
    with pytest.raises(InvalidConfig, match="MAC"):
        macs.normalize_mac(bad)


def test_guest_mac_must_be_unicast() -> None:
    with pytest.raises(InvalidConfig, match="multicast"):
        macs.check_guest_mac("01:16:3e:00:00:01")
    with pytest.raises(InvalidConfig):
        macs.check_guest_mac("00:00:00:00:00:00")


def test_tap_mac_keeps_the_guest_mac_readable() -> None:
    assert macs.tap_mac("00:16:3E:12:34:56") == "fe:16:3e:12:34:56"
    # fe: unicast and locally administered
    assert int("fe", 16) & 1 == 0 and int("fe", 16) & 2


# -- subnets -------------------------------------------------------------------------------
def test_parse_subnet() -> None:
    assert parse_subnet("10.1.2.0/24", "x") == IPv4Network("10.1.2.0/24")
    assert parse_subnet(" 192.168.5.0/30 ", "x") == IPv4Network("192.168.5.0/30")


@pytest.mark.parametrize("text,why", [
    ("10.1.2.1/24", "host bits"),
    ("10.1.2.0", "prefix /32"),
    ("10.1.2.0/31", "prefix /31"),
    ("10.0.0.0/7", "prefix /7"),
    ("fd00::/64", "IPv6"),
    ("127.0.0.0/24", "special-purpose"),
    ("169.254.1.0/24", "special-purpose"),
    ("224.0.1.0/24", "special-purpose"),
    ("banana", "invalid subnet"),
    ("10.1.2.0/24/1", "invalid subnet"),
])
def test_parse_subnet_rejects(text: str, why: str) -> None:
    with pytest.raises(InvalidConfig, match=re.escape(why)) as e:
        parse_subnet(text, "to create network 'n'")
    assert e.value.message.startswith("Failed to create network 'n': ")


def test_overlap_names_the_owner() -> None:
    claims = [Claim(IPv4Network("192.0.2.0/24"), "eth0"), Claim(IPv4Network("10.5.0.0/16"), "vpn")]
    got = first_overlap(IPv4Network("10.5.3.0/24"), claims)
    assert got is not None and got.owner == "vpn"
    assert first_overlap(IPv4Network("10.6.0.0/24"), claims) is None
    # a bigger subnet containing a claimed one overlaps too
    got = first_overlap(IPv4Network("10.0.0.0/8"), claims)
    assert got is not None and got.owner == "vpn"


def test_pick_free_skips_claims_and_ignores_default_route() -> None:
    first = pick_free([])
    assert first == IPv4Network("10.122.0.0/24")
    claims = [Claim(IPv4Network("0.0.0.0/0"), "default"),
              Claim(IPv4Network("10.122.0.0/23"), "a"),
              Claim(IPv4Network("10.122.2.7/32"), "b")]
    assert pick_free(claims) == IPv4Network("10.122.3.0/24")
    # the whole 10.122/16 taken: goes on with 10.123
    assert pick_free([Claim(IPv4Network("10.122.0.0/16"), "x")]) == IPv4Network("10.123.0.0/24")
    assert pick_free([Claim(IPv4Network("10.0.0.0/8"), "all")]) is None


def test_gateway_and_dhcp_range() -> None:
    net = IPv4Network("10.9.8.0/24")
    assert gateway(net) == IPv4Address("10.9.8.1")
    assert dhcp_range(net) == (IPv4Address("10.9.8.2"), IPv4Address("10.9.8.254"))
    assert dhcp_size(net) == 253
    small = IPv4Network("10.9.8.4/30")
    assert gateway(small) == IPv4Address("10.9.8.5")
    assert dhcp_range(small) == (IPv4Address("10.9.8.6"), IPv4Address("10.9.8.6"))
    assert dhcp_size(small) == 1


# -- rate -> tbf ---------------------------------------------------------------------------
def test_plan_rate_xl_default_interval() -> None:
    # rate=10Mb/s: 1.25 MB/s, credit 62500 bytes every 50 ms (libxlu's arithmetic)
    plan = ratelimit.plan_rate(parse_rate("10Mb/s"), 1500)
    assert plan.rate == 1_250_000
    assert plan.burst == 62_500
    assert plan.limit == 62_500 + 62_500  # burst + 50 ms at the rate


def test_plan_rate_burst_is_at_least_one_frame() -> None:
    # 1MB/s@1ms: 1000 bytes of credit per ms, less than a 1518-byte frame
    plan = ratelimit.plan_rate(parse_rate("1MB/s@1ms"), 1500)
    assert plan.rate == 1_000_000
    assert plan.burst == 1500 + ratelimit.FRAME_OVERHEAD
    jumbo = ratelimit.plan_rate(parse_rate("1MB/s@1ms"), 9000)
    assert jumbo.burst == 9018
    # the queue always holds two frames beyond the bucket
    assert jumbo.limit == jumbo.burst + max(50_000, 2 * 9018)


def test_plan_rate_clamps_huge_intervals() -> None:
    # 1 KB/s every 4000 s: Xen would allow a 4 MB burst; tbf's bucket ends at ~274 s
    plan = ratelimit.plan_rate(RateLimit(bytes_per_interval=4_000_000,
                                         interval_us=4_000_000_000), 1500)
    assert plan.rate == 1000
    assert plan.burst == int(1000 * ratelimit.MAX_BUCKET_SECONDS)


@pytest.mark.parametrize("rate,why", [
    (RateLimit(bytes_per_interval=0, interval_us=50_000), "less than a byte"),
    (RateLimit(bytes_per_interval=5, interval_us=1_000_000), "too low"),
    (RateLimit(bytes_per_interval=5 * 10**9, interval_us=1_000_000), "34 Gbit/s"),
])
def test_plan_rate_rejects(rate: RateLimit, why: str) -> None:
    with pytest.raises(InvalidConfig, match=re.escape(why)):
        ratelimit.plan_rate(rate, 1500)


@given(st.integers(min_value=0, max_value=2**40), st.integers(min_value=1, max_value=2**32 - 1),
       st.integers(min_value=68, max_value=65521))
def test_plan_rate_fits_the_kernel_or_says_why(per_interval: int, interval_us: int,
                                               mtu: int) -> None:
    rate = RateLimit(bytes_per_interval=per_interval, interval_us=interval_us)
    try:
        plan = ratelimit.plan_rate(rate, mtu)
    except InvalidConfig as e:
        assert e.message.startswith("Failed to apply the vif rate: ")
        return
    assert plan.rate == rate.bytes_per_second <= ratelimit.U32_MAX
    assert plan.burst >= mtu + ratelimit.FRAME_OVERHEAD
    # the bucket, as time at the rate, fits the kernel's u32 of psched ticks
    assert plan.burst / plan.rate * ratelimit.PSCHED_TICKS_PER_SEC <= ratelimit.U32_MAX
    assert plan.burst < plan.limit <= ratelimit.U32_MAX


def test_ifb_names_fit_and_map_back() -> None:
    assert ratelimit.ifb_name(17) == "xifb17"
    assert len(ratelimit.ifb_name(2**31 - 1)) <= 15
    assert ratelimit.ifb_owner("xifb17") == 17
    assert ratelimit.ifb_owner("ifb0") is None
    assert ratelimit.ifb_owner("xifb17x") is None


# -- nft -----------------------------------------------------------------------------------
def _rules(batch: dict, chain: str) -> list[list[dict]]:
    return [c["add"]["rule"]["expr"] for c in batch["nftables"]
            if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] == chain]


def test_nft_ruleset_is_one_table_of_our_own() -> None:
    batch = nft.ruleset("lab", "lab", IPv4Network("10.7.0.0/24"))
    json.dumps(batch)  # what nft -j gets
    cmds = batch["nftables"]
    table = {"family": "ip", "name": "xenia-lab"}
    # add + delete + add: an atomic replace that also works the first time
    assert cmds[:3] == [{"add": {"table": table}}, {"delete": {"table": table}},
                        {"add": {"table": table}}]
    for c in cmds[3:]:
        (obj,) = c["add"].values()
        assert obj["table"] == "xenia-lab" and obj["family"] == "ip"
    chains = {c["add"]["chain"]["name"]: c["add"]["chain"] for c in cmds[3:]
              if "chain" in c["add"]}
    assert chains["postrouting"]["type"] == "nat" and chains["postrouting"]["prio"] == 100
    assert chains["forward"]["hook"] == "forward"
    assert all(ch["policy"] == "accept" for ch in chains.values())


def test_nft_masquerades_the_subnet_leaving_through_other_interfaces() -> None:
    batch = nft.ruleset("lab", "brlab", IPv4Network("10.7.0.0/24"))
    masq = [r for r in _rules(batch, "postrouting") if {"masquerade": None} in r]
    assert len(masq) == 1
    text = json.dumps(masq[0])
    assert '"saddr"' in text and '"addr": "10.7.0.0", "len": 24' in text
    assert {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "brlab"}} \
        in masq[0]
    # multicast and broadcast return before the masquerade
    post = _rules(batch, "postrouting")
    assert post.index(masq[0]) == len(post) - 1
    fwd = json.dumps(_rules(batch, "forward"))
    assert "established" in fwd and "reject" in fwd


def test_nft_removal_is_idempotent_batch() -> None:
    table = {"family": "ip", "name": "xenia-lab"}
    assert nft.removal("lab") == {"nftables": [{"add": {"table": table}},
                                               {"delete": {"table": table}}]}


# -- dnsmasq -------------------------------------------------------------------------------
def test_dnsmasq_argv(tmp_path: Path) -> None:
    files = DnsmasqFiles.under(tmp_path / "run", tmp_path / "state")
    argv = dnsmasq_argv("/usr/sbin/dnsmasq", "natbr", IPv4Network("10.7.0.0/24"), files)
    assert argv[0] == "/usr/sbin/dnsmasq"
    assert argv[1] == "--conf-file=/dev/null"
    for opt in ("--bind-interfaces", "--interface=natbr", "--except-interface=lo",
                "--dhcp-authoritative", f"--pid-file={tmp_path}/run/dnsmasq.pid",
                f"--dhcp-leasefile={tmp_path}/state/dnsmasq.leases",
                "--dhcp-range=10.7.0.2,10.7.0.254,255.255.255.0,1h",
                "--dhcp-lease-max=253"):
        assert opt in argv
    assert all(isinstance(a, str) and "\n" not in a for a in argv)


# -- records and vif checks ----------------------------------------------------------------
def test_network_record_round_trip() -> None:
    rec = NetworkRecord(name="lab", type="nat", bridge="lab", subnet="10.7.0.0/24", dhcp=True,
                        created_at=1.0)
    d = rec.to_dict()
    assert NetworkRecord.from_dict({**d, "future_key": 1}) == rec
    assert str(rec.address) == "10.7.0.1/24"
    assert NetworkRecord(name="b", type="bridge", bridge="b").address is None


@pytest.mark.parametrize("vif,why", [
    (VifSpec(bridge="bad/name"), "invalid bridge"),
    (VifSpec(vifname="x" * 16), "invalid vifname"),
    (VifSpec(mtu=67), "mtu 67 is out of range"),
    (VifSpec(mtu=70000), "mtu 70000"),
    (VifSpec(mac="01:00:5e:00:00:01"), "multicast"),
    (VifSpec(rate=RateLimit(bytes_per_interval=0)), "less than a byte"),
])
def test_vif_spec_checks(tmp_path: Path, vif: VifSpec, why: str) -> None:
    nm = NetworkManager(Paths(tmp_path / "s", tmp_path / "r"), store=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidConfig, match=re.escape(why)):
        nm._check_vif_spec(vif, "to attach vif")


def test_vif_default_bridge_is_xenbr0(tmp_path: Path) -> None:
    nm = NetworkManager(Paths(tmp_path / "s", tmp_path / "r"), store=None)  # type: ignore[arg-type]
    assert nm._check_vif_spec(VifSpec(), "to attach vif") == "xenbr0"
    assert nm._check_vif_spec(VifSpec(bridge="natbr", rate=parse_rate("10Mb/s")),
                              "to attach vif") == "natbr"


def test_tap_stats_are_from_the_guests_side(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from xenia.network import manager as mgr

    class FakeIPRoute:
        def __enter__(self) -> FakeIPRoute:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    tap = mgr.nl.Link(index=7, name="vif1.0", kind="tun", master=3, mtu=1500, address="",
                      up=True, carrier=True, is_tap=True, alias=None)
    counters = {"rx_bytes": 1, "rx_packets": 2, "tx_bytes": 3, "tx_packets": 4,
                "rx_dropped": 5, "tx_dropped": 6, "rx_errors": 7, "tx_errors": 8}
    monkeypatch.setattr(mgr, "IPRoute", FakeIPRoute)
    monkeypatch.setattr(mgr.nl, "link", lambda ipr, name: tap if name == "vif1.0" else None)
    monkeypatch.setattr(mgr.nl, "stats64", lambda ipr, index: counters)
    nm = NetworkManager(Paths(tmp_path / "s", tmp_path / "r"), store=None)  # type: ignore[arg-type]
    got: dict[str, Any] = nm.tap_stats("vif1.0")
    # what the tap transmits, the guest receives
    assert got == {"rx_bytes": 3, "rx_packets": 4, "tx_bytes": 1, "tx_packets": 2,
                   "rx_dropped": 6, "tx_dropped": 5, "rx_errors": 8, "tx_errors": 7}

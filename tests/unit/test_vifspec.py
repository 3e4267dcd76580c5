"""Vif specs: every vector of Xen's tools/xl/check-xl-vif-parse, and more."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenia.config.model import RateLimit, VifSpec
from xenia.config.vifspec import parse_rate, parse_vif_spec
from xenia.errors import InvalidConfig

RATE_100K = {"rate_bytes_per_interval": 100000, "rate_interval_usecs": 50000}
RATE_100 = {"rate_bytes_per_interval": 100, "rate_interval_usecs": 50000}
RATE_50M = {"rate_bytes_per_interval": 50000000, "rate_interval_usecs": 50000}
RATE_10M_1S = {"rate_bytes_per_interval": 10000000, "rate_interval_usecs": 1000000}

# (argument of `xl network-attach 0 ...`, expected JSON or None for a failure), in the
# script's order.
XEN_VECTORS: list[tuple[str, dict[str, Any] | None]] = [
    # invalid vif config
    ("foo", None),
    # invalid rate units
    ("rate=foo", None),
    ("rate=foo", None),
    ("rate=10MB", None),
    ("rate=10MB/m", None),
    ("rate=10ZB", None),
    ("rate=10ZB/s", None),
    ("rate=10ZB/m", None),
    # b/s and B/s
    ("rate=16000000b/s", RATE_100K),
    ("rate=16000000b/s@50ms", RATE_100K),
    ("rate=2000000B/s", RATE_100K),
    ("rate=2000000B/s@50ms", RATE_100K),
    # Kb/s and KB/s
    ("rate=16Kb/s", RATE_100),
    ("rate=16Kb/s@50ms", RATE_100),
    ("rate=2KB/s", RATE_100),
    ("rate=2KB/s@50ms", RATE_100),
    # Mb/s and MB/s
    ("rate=16Mb/s", RATE_100K),
    ("rate=16Mb/s@50ms", RATE_100K),
    ("rate=2MB/s", RATE_100K),
    ("rate=2MB/s@50ms", RATE_100K),
    # Gb/s and GB/s
    ("rate=8Gb/s", RATE_50M),
    ("rate=8Gb/s@50ms", RATE_50M),
    ("rate=1GB/s", RATE_50M),
    ("rate=1GB/s@50ms", RATE_50M),
    # rate overflow
    ("rate=4294967296b/s", None),
    ("rate=4294967296Kb/s", None),
    ("rate=4294967296Mb/s", None),
    ("rate=4294967296Gb/s", None),
    # rate underflow
    ("rate=0B/s", None),
    # invalid replenishment interval
    ("rate=10Mb/s@foo", None),
    ("rate=10Mb/s@10h", None),
    ("rate=10MB/s@foo", None),
    ("rate=10MB/s@10h", None),
    # replenishment interval in seconds
    ("rate=80Mb/s@1s", RATE_10M_1S),
    ("rate=10MB/s@1s", RATE_10M_1S),
    # replenishment interval overflow
    ("rate=1B/s@4294967296us", None),
    ("rate=1B/s@4294968ms", None),
    ("rate=1B/s@4295s", None),
    # replenishment interval underflow
    ("rate=1B/s@0us", None),
    # rate limiting resulting in overflow
    ("rate=4294967295GB/s@5us", None),
    ("rate=4296MB/s@4294s", None),
    # a single '@'
    ("rate=@", None),
    # trusted / untrusted
    ("trusted", {"trusted": "True"}),
    ("untrusted", {"trusted": "False"}),
]


def from_xl(xl: dict[str, Any], spec: str) -> VifSpec:
    rate = None
    if "rate_bytes_per_interval" in xl:
        rate = RateLimit(xl["rate_bytes_per_interval"], xl["rate_interval_usecs"])
    trusted = {"True": True, "False": False, None: None}[xl.get("trusted")]
    return VifSpec(rate=rate, trusted=trusted, spec=spec)


@pytest.mark.parametrize(("spec", "expected"), XEN_VECTORS, ids=[s for s, _ in XEN_VECTORS])
def test_xen_vectors(spec: str, expected: dict[str, Any] | None) -> None:
    # The vectors run `xl network-attach`, which rejects unknown keys: strict mode.
    if expected is None:
        with pytest.raises(InvalidConfig) as info:
            parse_vif_spec(spec, strict=True)
        assert str(info.value).startswith(f"Failed to parse vif spec '{spec}': ")
        return
    assert parse_vif_spec(spec, strict=True) == from_xl(expected, spec)
    assert parse_vif_spec(spec) == from_xl(expected, spec)


def test_empty_spec_is_all_defaults() -> None:
    assert parse_vif_spec("") == VifSpec(spec="")
    assert parse_vif_spec(",, ,") == VifSpec(spec=",, ,")


def test_doc_examples() -> None:
    vif = parse_vif_spec("mac=00:16:3E:74:3d:76,model=rtl8139,bridge=xenbr0")
    assert (vif.mac, vif.model, vif.bridge) == ("00:16:3e:74:3d:76", "rtl8139", "xenbr0")
    assert parse_vif_spec("mac=00:16:3E:74:34:32").mac == "00:16:3e:74:34:32"
    assert parse_vif_spec("rate=10Mb/s").rate == RateLimit(62500, 50000)
    assert parse_vif_spec("rate=250KB/s").rate == RateLimit(12500, 50000)
    # "20,000 bytes replenished every 20,000 us"
    assert parse_vif_spec("rate=1MB/s@20ms").rate == RateLimit(20000, 20000)


def test_all_keys() -> None:
    spec = ("mac=00:16:3e:00:00:01, bridge=br0, model=e1000, type=ioemu, vifname=web0, "
            "ip=10.0.0.2, script=vif-route, backend=netdom, gatewaydev=eth0, mtu=9000, "
            "devid=3, rate=1MB/s, vlan=10, trusted")
    assert parse_vif_spec(spec, strict=True) == VifSpec(
        mac="00:16:3e:00:00:01", bridge="br0", model="e1000", type="ioemu",
        vifname="web0", ip="10.0.0.2", script="vif-route", backend="netdom",
        gatewaydev="eth0", rate=RateLimit(50000, 50000), mtu=9000, devid=3, spec=spec,
        vlan="10", trusted=True)


def test_later_value_wins_and_empty_value_means_default() -> None:
    assert parse_vif_spec("bridge=a,bridge=b").bridge == "b"
    assert parse_vif_spec("bridge=a,bridge=").bridge is None


@pytest.mark.parametrize(
    ("mac", "normal"),
    [("00:16:3e:0a:0b:0c", "00:16:3e:0a:0b:0c"), ("0:16:3E:A:B:C", "00:16:3e:0a:0b:0c"),
     ("02-00-00-00-00-01", "02:00:00:00:00:01"), ("FF:ff:Ff:fF:ff:ff", "ff:ff:ff:ff:ff:ff")],
)
def test_mac(mac: str, normal: str) -> None:
    assert parse_vif_spec(f"mac={mac}").mac == normal


@pytest.mark.parametrize(
    "mac", ["", "00:16:3e:00:00", "00:16:3e:00:00:00:01", "000:16:3e:00:00:01",
            "00:16:3e:00:00:0g", "0016.3e00.0001", "00:16:3e:00:00:01 "],
)
def test_bad_mac(mac: str) -> None:
    with pytest.raises(InvalidConfig, match="invalid mac"):
        parse_vif_spec(f"mac={mac}")


@pytest.mark.parametrize(
    ("spec", "cause"),
    [
        ("type=virtio", "invalid type 'virtio'"),
        ("mtu=abc", "invalid mtu 'abc'"),
        ("mtu=67", "invalid mtu '67'"),
        ("mtu=65536", "invalid mtu"),
        ("mtu=-1", "invalid mtu"),
        ("mtu=" + "9" * 5000, "invalid mtu"),
        ("devid=x", "invalid devid 'x'"),
        ("devid=2147483648", "invalid devid"),
        ("vlan=0", "out of range"),
        ("vlan=4095", "out of range"),
        ("vlan=10/20", "exactly one PVID"),
        ("vlan=10p/20p", "exactly one PVID"),
        ("vlan=10-20p", "a vlan range cannot be the PVID"),
        ("vlan=20-10", "invalid vlan range"),
        ("vlan=10p/4000+100x2", "out of range"),
        ("vlan=x", "invalid vlan term 'x'"),
        ("rate=08MB/s", "invalid rate"),
        ("rate=1MB/s@", "invalid replenishment interval ''"),
        ("rate=" + "1" * 5000 + "B/s", "too large"),
    ],
)
def test_errors(spec: str, cause: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        parse_vif_spec(spec)
    assert str(info.value).startswith(f"Failed to parse vif spec '{spec}': ")
    assert cause in str(info.value)


@pytest.mark.parametrize(
    ("vlan"), ["10", "10p", "10p/20", "10p/20u", "10p/100+10x4", "1p/2-4094u", "4094"],
)
def test_vlans(vlan: str) -> None:
    assert parse_vif_spec(f"vlan={vlan}").vlan == vlan


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        ("1B/s", RateLimit(0, 50000)),  # xl rounds down, even to nothing
        ("1000B/s@1000us", RateLimit(1, 1000)),
        ("010B/s@1s", RateLimit(8, 1000000)),  # strtoull: a leading 0 is octal
        ("1MB/s@20m", RateLimit(20000, 20000)),  # "ms" may lose its s
        ("1MB/s@20u", RateLimit(20, 20)),
        ("1MB/s@2", RateLimit(2000000, 2000000)),  # bare number: seconds
        ("4294967295B/s@4294967295us", RateLimit(4294967295 * 4294967295 // 10**6,
                                                  4294967295)),
    ],
)
def test_rates(rate: str, expected: RateLimit) -> None:
    assert parse_rate(rate) == expected


def test_parse_rate_error_names_the_rate() -> None:
    with pytest.raises(InvalidConfig, match="Failed to parse rate '1XB/s'"):
        parse_rate("1XB/s")


def test_unknown_keys_warn_unless_strict(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="xenia.config"):
        vif = parse_vif_spec("bridge=br0,colour=red,foo")
    assert vif.bridge == "br0"
    assert "unknown parameter 'colour'" in caplog.text
    assert "unknown flag 'foo'" in caplog.text
    with pytest.raises(InvalidConfig, match="unknown parameter 'colour'"):
        parse_vif_spec("bridge=br0,colour=red", strict=True)


@pytest.mark.parametrize("spec", ["accel=foo", "forwarddev=eth0", "colo_sock_mirror_id=1"])
def test_xl_keys_xenia_ignores(spec: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="xenia.config"):
        assert parse_vif_spec(spec, strict=True) == VifSpec(spec=spec)
    assert "not supported by Xenia" in caplog.text


def test_netdev_is_a_deprecated_gatewaydev(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="xenia.config"):
        assert parse_vif_spec("netdev=eth1").gatewaydev == "eth1"
    assert "deprecated" in caplog.text


@settings(max_examples=400)
@given(st.text(alphabet="abmcdeinoprstuv0129:,=/@ BKMGb-x", max_size=40) | st.text(max_size=40))
def test_any_spec_parses_or_raises_invalid_config(spec: str) -> None:
    for strict in (False, True):
        try:
            parse_vif_spec(spec, strict=strict)
        except InvalidConfig as e:
            assert str(e).startswith("Failed to parse vif spec ")

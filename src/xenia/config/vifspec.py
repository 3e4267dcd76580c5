"""Network interface specs, xl-network-configuration(5); the main function is
parse_vif_spec.

A spec is comma-separated `key=value` pairs and flags, each optional: `''` is a vif
with every default. Keys are those of xl's parse_nic_config; `rate=` follows libxlu's
xlu_vif_parse_rate to the byte (see parse_rate).

Unknown keys and flags are ignored with a warning on the "xenia.config" logger, as
xl does for a config file; `strict=True` makes them errors, as `xl network-attach`
does. So are keys xl knows but Xenia does not use (accel, COLO settings). A bad value
for a known key is always an error (xl ignores some in config files). An empty value
(`bridge=`) means the default.
"""

from __future__ import annotations

import logging
import re

from xenia.config.model import RateLimit, VifSpec
from xenia.errors import InvalidConfig

log = logging.getLogger("xenia.config")

_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
_RATE_RE = re.compile(r"([0-9]+)([GMK]?)([Bb])/s\Z")
_INTERVAL_RE = re.compile(r"([0-9]+)([mu]?)(s?)\Z")
_MAC_RE = re.compile(r"[0-9a-fA-F]{1,2}(?:[:-][0-9a-fA-F]{1,2}){5}\Z")
_UNIT = {"G": 10**9, "M": 10**6, "K": 10**3, "": 1}
_INTERVAL_UNIT = {"": 10**6, "m": 10**3, "u": 1}  # to microseconds
_STRING_KEYS = {
    "bridge": "bridge",
    "gatewaydev": "gatewaydev",
    "ip": "ip",
    "script": "script",
    "backend": "backend",
    "vifname": "vifname",
    "model": "model",
}
# Keys xl knows that Xenia has no use for.
_IGNORED = re.compile(r"(accel|forwarddev|colo_[a-z0-9_]+)\Z")
_VLAN_TERM_RE = re.compile(
    r"(?P<id>[0-9]+)(?:-(?P<end>[0-9]+)|\+(?P<step>[0-9]+)x(?P<count>[0-9]+))?(?P<flag>[pu]?)\Z"
)


class _VifError(Exception):
    pass


def parse_vif_spec(spec: str, *, strict: bool = False) -> VifSpec:
    """One entry of `vif = [...]`; raises InvalidConfig naming the spec and the cause."""
    try:
        return _parse(spec, strict)
    except _VifError as e:
        raise InvalidConfig(f"Failed to parse vif spec '{spec}': {e}") from None


def _parse(spec: str, strict: bool) -> VifSpec:
    vif = VifSpec(spec=spec)
    # Warnings are gathered and logged once a spec: a spec repeating an unknown flag must
    # not write its whole text once per repetition (quadratic output).
    ignored: dict[str, None] = {}
    # Like xl's strtok: empty items vanish, leading blanks are dropped.
    for token in (t.lstrip(" ") for t in spec.split(",")):
        if not token:
            continue
        key, eq, value = token.partition("=")
        if not eq:
            if token in ("trusted", "untrusted"):
                vif.trusted = token == "trusted"
            else:
                _unknown(ignored, f"unknown flag '{token}'", strict)
        elif key in _STRING_KEYS:
            setattr(vif, _STRING_KEYS[key], value or None)
        elif key == "netdev":
            ignored.setdefault("netdev= is deprecated, use gatewaydev=")
            vif.gatewaydev = value or None
        elif key == "type":
            if value not in ("vif", "ioemu"):
                raise _VifError(f"invalid type '{value}' (expected vif or ioemu)")
            vif.type = value
        elif key == "mac":
            vif.mac = _mac(value)
        elif key == "rate":
            vif.rate = _rate(value)
        elif key == "mtu":
            vif.mtu = _number("mtu", value, 68, 65535)
        elif key == "devid":
            vif.devid = _number("devid", value, 0, 2**31 - 1)
        elif key == "vlan":
            vif.vlan = _vlan(value)
        elif _IGNORED.match(key):
            ignored.setdefault(f"{key}= is not supported by Xenia; ignored")
        else:
            _unknown(ignored, f"unknown parameter '{key}'", strict)
    if ignored:
        shown = list(ignored)
        more = f" (and {len(shown) - 5} more)" if len(shown) > 5 else ""
        log.warning("vif spec '%s': %s%s", _clip(spec), "; ".join(_clip(w) for w in shown[:5]),
                    more)
    return vif


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unknown(ignored: dict[str, None], problem: str, strict: bool) -> None:
    if strict:
        raise _VifError(problem)
    ignored.setdefault(f"{problem}; ignored")


def _mac(value: str) -> str:
    """`value` as aa:bb:cc:dd:ee:ff; accepts one-digit groups and '-' like xl."""
    if not _MAC_RE.match(value):
        raise _VifError(f"invalid mac '{value}' (expected six hex pairs like 00:16:3e:01:02:03)")
    return ":".join(f"{int(g, 16):02x}" for g in re.split("[:-]", value))


def _number(key: str, value: str, low: int, high: int) -> int:
    if not (value.isascii() and value.isdigit() and low <= _small(value) <= high):
        raise _VifError(f"invalid {key} '{value}' (expected a number from {low} to {high})")
    return _small(value)


def _small(digits: str) -> int:
    """int(digits) for the ranges checked here, without converting huge strings."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 12 else 10**12


def _c_uint(digits: str) -> int | None:
    """`digits` as C's strtoull(s, 0) reads them (leading 0: octal), or None if bad."""
    if len(digits) > 1 and digits.startswith("0"):
        return int(digits, 8) if all(d in "01234567" for d in digits) else None
    # Longer than 20 digits is out of range anyway; int() would refuse > 4300.
    return int(digits) if len(digits) <= 20 else _UINT64_MAX + 1


def parse_rate(rate: str) -> RateLimit:
    """`RATE/s[@INTERVAL]` as a RateLimit, computed exactly as libxlu does.

    RATE is a number with an optional K, M or G (powers of 1000) and B (bytes) or b
    (bits); INTERVAL is a number with s (the default), ms or us, 50ms if not given. The
    credit is RATE * INTERVAL bytes every INTERVAL. Both numbers must be 1..2**32-1
    before their unit is applied. Raises InvalidConfig.
    """
    try:
        return _rate(rate)
    except _VifError as e:
        raise InvalidConfig(f"Failed to parse rate '{rate}': {e}") from None


def _rate(rate: str) -> RateLimit:
    text, at, interval_text = rate.partition("@")
    if not text:
        raise _VifError(f"no rate specified in rate '{rate}'")
    m = _RATE_RE.match(text)
    number = _c_uint(m.group(1)) if m else None
    if m is None or number is None:
        raise _VifError(f"invalid rate '{text}' (expected e.g. 10Mb/s or 1MB/s@20ms)")
    if number == 0:
        raise _VifError(f"rate '{text}' must be above zero")
    if number > _UINT32_MAX:
        raise _VifError(f"rate '{text}' is too large (number above {_UINT32_MAX})")
    bytes_per_sec = number * _UNIT[m.group(2)]
    if m.group(3) == "b":
        bytes_per_sec //= 8
    interval_us = 50_000
    if at:
        interval_us = _interval(interval_text)
    # libxlu's guard against overflowing a uint64 in the product below.
    if bytes_per_sec > _UINT64_MAX // interval_us:
        raise _VifError(f"rate '{rate}' overflows")
    return RateLimit(bytes_per_interval=bytes_per_sec * interval_us // 1_000_000,
                     interval_us=interval_us)


def _interval(text: str) -> int:
    m = _INTERVAL_RE.match(text)
    number = _c_uint(m.group(1)) if m else None
    if m is None or number is None:
        raise _VifError(f"invalid replenishment interval '{text}' (expected e.g. 50ms, "
                        "100us or 1s)")
    if number == 0:
        raise _VifError(f"replenishment interval '{text}' must be above zero")
    interval_us = number * _INTERVAL_UNIT[m.group(2)]
    if number > _UINT32_MAX or interval_us > _UINT32_MAX:
        raise _VifError(f"replenishment interval '{text}' is too large "
                        f"(at most {_UINT32_MAX}us)")
    return interval_us


def _vlan(value: str) -> str:
    """Checks xl's vlan= syntax (IDs 1..4094, terms joined by '/'); returns it."""
    ids = 0
    pvids = 0
    for term in value.split("/"):
        m = _VLAN_TERM_RE.match(term)
        if m is None:
            raise _VifError(f"invalid vlan term '{term}' (expected N, Np, Nu, N-M or N+OxC)")
        first = _small(m["id"])
        if m["end"] is not None:
            last = _small(m["end"])
            count = last - first + 1
            if last < first:
                raise _VifError(f"invalid vlan range '{term}'")
        elif m["step"] is not None:
            count = _small(m["count"]) + 1
            last = first + _small(m["step"]) * (count - 1)
        else:
            count, last = 1, first
        if not (1 <= first <= 4094 and 1 <= last <= 4094):
            raise _VifError(f"vlan ID out of range 1..4094 in '{term}'")
        if m["flag"] == "p":
            if count != 1:
                raise _VifError(f"a vlan range cannot be the PVID: '{term}'")
            pvids += 1
        ids += count
    if pvids > 1 or (pvids == 0 and ids > 1):
        raise _VifError(f"vlan '{value}' needs exactly one PVID (marked with p)")
    return value

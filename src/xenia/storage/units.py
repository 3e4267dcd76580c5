"""Names and sizes of pools, volumes and snapshots: check_name, parse_size, format_size.

Kept free of heavy imports: the CLI imports it at start-up.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from xenia.errors import InvalidConfig

# No '/', and no leading '.' or '-': so a name is one path component that can never be
# '.', '..' or a hidden temp file (the dir driver keeps its own files under dot-names),
# and never reads as an option to a tool either.
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}\Z")
NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-'"

SECTOR = 512
# off_t is signed 64-bit; anything larger cannot be a file size.
MAX_SIZE = 2**63 - SECTOR

# virsh's and Incus's reading of units: a bare letter or XiB is binary, XB is decimal.
_UNITS: dict[str, int] = {"": 1, "b": 1}
for _i, _letter in enumerate("kmgtpe", start=1):
    _UNITS[_letter] = 1024**_i
    _UNITS[_letter + "ib"] = 1024**_i
    _UNITS[_letter + "b"] = 1000**_i

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*\Z")
SIZE_RULE = ("a number of bytes with an optional unit: K, M, G, T, P, E or KiB..EiB "
             "(powers of 1024), KB..EB (powers of 1000), e.g. 512M, 10GiB")


def valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name))


def check_name(kind: str, name: str, doing: str) -> str:
    """`name` if it is a valid pool/volume/snapshot name, else InvalidConfig.

    `doing` completes "Failed <doing>", e.g. "to create volume 'x'".
    """
    if not isinstance(name, str) or not valid_name(name):
        raise InvalidConfig(f"Failed {doing}: {name!r} is not a valid {kind} name ({NAME_RULE})")
    return name


def parse_size(text: str | int, doing: str) -> int:
    """Bytes in a size like 1G, 512M, 10GiB, 1.5T or 1073741824.

    The result must be a positive whole number of 512-byte sectors: qemu-img would round
    anything else up silently, and a volume of another size than asked for is a surprise.
    """
    if isinstance(text, bool):
        raise InvalidConfig(f"Failed {doing}: {text!r} is not a size ({SIZE_RULE})")
    if isinstance(text, int):
        value = Decimal(text)
    else:
        m = _SIZE_RE.match(text)
        unit = m[2].lower() if m else ""
        if not m or unit not in _UNITS:
            raise InvalidConfig(f"Failed {doing}: {text!r} is not a size ({SIZE_RULE})")
        try:
            value = Decimal(m[1]) * _UNITS[unit]
        except InvalidOperation as e:  # pragma: no cover - the regex admits only numbers
            raise InvalidConfig(f"Failed {doing}: {text!r} is not a size ({SIZE_RULE})") from e
    if value != value.to_integral_value():
        raise InvalidConfig(f"Failed {doing}: {text!r} is not a whole number of bytes")
    size = int(value)
    if size <= 0:
        raise InvalidConfig(f"Failed {doing}: the size must be more than 0 (got {text!r})")
    if size > MAX_SIZE:
        raise InvalidConfig(f"Failed {doing}: {text!r} is larger than any file can be")
    if size % SECTOR:
        raise InvalidConfig(
            f"Failed {doing}: {text!r} ({size} bytes) is not a multiple of {SECTOR} bytes; "
            "disk sizes are whole sectors (use K, M, G, which are powers of 1024)"
        )
    return size


def format_size(size: int) -> str:
    """Short binary size for tables: 0B, 512B, 196KiB, 1GiB, 1.5GiB, 1.06GiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024 or unit == "EiB":
            text = f"{value:.2f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover

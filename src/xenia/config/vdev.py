"""Guest disk names (vdevs) as libxl reads them; the main function is vdev_number.

Accepted, like libxl__device_disk_dev_number:

* `xvd<letters>[<partition>]`: disk index up to 2**20-1, partition 1..255;
* `d<disk>p<partition>`: the same space written with numbers;
* `hd<letters>[<partition>]`: hda..hdd, partition 1..63;
* `sd<letters>[<partition>]`: sda..sdp, partition 1..15;
* a plain device number (decimal, 0-octal or 0x-hex) up to 2**31-1.

Letters count like spreadsheet columns: a=0, z=25, aa=26. Partition numbers have no
leading zeros.
"""

from __future__ import annotations

import re

_INT_MAX = 2**31 - 1
_C_INT = r"(0[xX][0-9a-fA-F]+|[0-9]+)"
_DP_RE = re.compile(rf"d{_C_INT}p{_C_INT}\Z")


def _c_int(text: str) -> int | None:
    """`text` read like C's strtol(text, 0) when it consumes all of it, else None."""
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
        return int(text, 16)
    if re.fullmatch(r"0[0-7]*", text):
        return int(text, 8)
    if re.fullmatch(r"[1-9][0-9]{0,18}", text):
        return int(text)
    return None


def _virtdisk(vdev: str, prefix: str, max_index: int, max_partition: int
              ) -> tuple[int, int] | None:
    """(disk index, partition) if `vdev` is prefix+letters[+partition], else None."""
    if not vdev.startswith(prefix):
        return None
    pos = len(prefix)
    index = -1
    while pos < len(vdev) and "a" <= vdev[pos] <= "z":
        index = (index + 1) * 26 + (ord(vdev[pos]) - ord("a"))
        if index > max_index:  # checked per letter, so long names stay cheap
            return None
        pos += 1
    if index < 0:
        return None
    rest = vdev[pos:]
    if not rest:
        return index, 0
    if rest[0] == "0" or not rest.isascii() or not rest.isdigit() or len(rest) > 4:
        return None
    partition = int(rest)
    return (index, partition) if partition <= max_partition else None


def vdev_number(vdev: str) -> int | None:
    """The Xen device number of `vdev`, or None if libxl would not accept the name.

    Two names with one number (xvda and d0p0, say) are the same device.
    """
    m = _DP_RE.match(vdev)
    if m:
        disk, partition = _c_int(m.group(1)), _c_int(m.group(2))
        if disk is not None and partition is not None and disk < 2**20 and partition < 256:
            return _xvd_number(disk, partition)
    found = _virtdisk(vdev, "xvd", 2**20 - 1, 255)
    if found:
        return _xvd_number(*found)
    plain = _c_int(vdev)
    if plain is not None:
        return plain if plain <= _INT_MAX else None
    found = _virtdisk(vdev, "hd", 3, 63)
    if found:
        disk, partition = found
        return ((3 if disk < 2 else 22) << 8) | ((disk & 1) << 6) | partition
    found = _virtdisk(vdev, "sd", 15, 15)
    if found:
        disk, partition = found
        return (8 << 8) | (disk << 4) | partition
    return None


def _xvd_number(disk: int, partition: int) -> int:
    if disk <= 15 and partition <= 15:
        return (202 << 8) | (disk << 4) | partition
    return (1 << 28) | (disk << 8) | partition

from __future__ import annotations

from pathlib import Path

import pytest

from xenia.errors import InvalidConfig, NotFound
from xenia.migration import savefile


def make(tmp: Path, payload: bytes = b"QEVM" + bytes(range(256)) * 100) -> Path:
    p = tmp / "s.save"
    h = savefile.begin(p, {"record": {"name": "x"}})
    with open(p, "r+b") as f:  # what QEMU does with file:PATH,offset=N
        f.seek(h.offset)
        f.write(payload)
    savefile.finish(p, h)
    return p


def test_round_trip(tmp_path: Path) -> None:
    p = make(tmp_path)
    h = savefile.verify(p)
    assert h.meta["record"] == {"name": "x"} and h.offset % savefile.STREAM_ALIGN == 0
    assert p.read_bytes()[h.offset:h.offset + 4] == b"QEVM"


def test_truncated_is_refused(tmp_path: Path) -> None:
    p = make(tmp_path)
    data = p.read_bytes()
    for cut in (len(data) - 1, len(data) - 60, 5000, 30, 10):
        p.write_bytes(data[:cut])
        with pytest.raises(InvalidConfig, match="truncated|bad magic"):
            savefile.verify(p)


def test_corrupted_is_refused(tmp_path: Path) -> None:
    p = make(tmp_path)
    data = bytearray(p.read_bytes())
    h = savefile.verify(p)
    data[h.offset + 100] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(InvalidConfig, match="checksum mismatch"):
        savefile.verify(p)


def test_not_a_save_file(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(b"hello world" * 100)
    with pytest.raises(InvalidConfig, match="not a Xenia save file"):
        savefile.verify(p)
    with pytest.raises(NotFound):
        savefile.verify(tmp_path / "missing")

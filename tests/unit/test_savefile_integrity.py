"""A save file's record is xeniad's, never QEMU's: QEMU (which a guest may have taken
over) gets a pipe, not the file, and a header changed on disk before finish is refused."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import struct
from pathlib import Path
from typing import Any

import pytest

from xenia.drivers import qemu_migrate
from xenia.errors import BackendError, InvalidConfig
from xenia.migration import savefile
from xenia.qemu.commands import Qmp

STREAM = b"QEVM" + bytes(range(256)) * 300  # larger than one pipe buffer's worth


def forge(path: Path, header: savefile.SaveHeader, target: str) -> None:
    """What a QEMU holding the file could do: rewrite the record, same length or not."""
    meta = json.loads(header.blob)
    meta["record"]["config"]["disks"] = [{"target": target}]
    blob = json.dumps(meta, sort_keys=True).encode()
    with open(path, "r+b") as f:
        f.write(savefile.MAGIC + struct.pack(">Q", len(blob)) + blob)


def test_a_header_changed_before_finish_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.save"
    header = savefile.begin(path, {"record": {"name": "d", "config": {"disks": []}}})
    with open(path, "ab") as f:
        f.write(STREAM)
    forge(path, header, "/root/.ssh/authorized_keys")
    with pytest.raises(InvalidConfig, match="header is not the one Xenia wrote"):
        savefile.finish(path, header)
    # No trailer: the file never verifies, whatever name it is given.
    with pytest.raises(InvalidConfig, match="truncated"):
        savefile.verify(path)


def test_finish_digests_the_header_it_wrote_and_takes_the_file_back(tmp_path: Path) -> None:
    path = tmp_path / "d.save"
    header = savefile.begin(path, {"record": {"name": "d"}})
    os.chmod(path, 0o666)  # as a file handed to another user might be
    with open(path, "ab") as f:
        f.write(STREAM)
    savefile.finish(path, header)
    st = path.stat()
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.geteuid()
    again = savefile.verify(path)
    assert again.sha256 == header.sha256 and again.meta["record"] == {"name": "d"}


class FakeQemu:
    """A QMP channel that behaves as QEMU does with `fd:` channels: it keeps the fd getfd
    names, writes its stream into it (save) or reads one from it (restore)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sent: list[tuple[str, Any]] = []
        self.fds: dict[str, int] = {}
        self.pending = -1
        self.loaded = b""
        self.pipes: list[bool] = []

    async def command(self, cmd: str, args: dict[str, Any] | None = None,
                      timeout: float = 30.0) -> Any:
        self.sent.append((cmd, args))
        if cmd == "getfd":
            assert args is not None
            self.fds[args["fdname"]] = self.pending
        elif cmd == "migrate":
            assert args is not None
            fd = self.fds.pop(args["channels"][0]["addr"]["str"])
            await asyncio.to_thread(self._write, fd)
        elif cmd == "migrate-incoming":
            assert args is not None
            fd = self.fds.pop(args["channels"][0]["addr"]["str"])
            await asyncio.to_thread(self._read, fd)
        elif cmd == "closefd":
            raise BackendError("Failed closefd: File descriptor not found")
        elif cmd == "query-status":
            return {"status": "running"}
        elif cmd == "query-migrate":
            return {"status": "completed"}

    def _write(self, fd: int) -> None:
        with os.fdopen(fd, "wb") as f:
            f.write(STREAM)

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as f:
            self.loaded = f.read(len(STREAM))

    def send_fd(self, fd: int) -> None:
        self.pending = os.dup(fd)  # QEMU's own copy, as SCM_RIGHTS gives it
        self.pipes.append(stat.S_ISFIFO(os.fstat(fd).st_mode))


def test_qemu_gets_a_pipe_never_the_file(tmp_path: Path) -> None:
    path = tmp_path / "d.save"
    header = savefile.begin(path, {"record": {"name": "d"}})
    qemu = FakeQemu(path)
    asyncio.run(qemu_migrate.save(Qmp(qemu), path, header.offset))
    savefile.finish(path, header)
    loaded = savefile.verify(path)
    assert path.read_bytes()[loaded.offset:loaded.offset + len(STREAM)] == STREAM
    back = FakeQemu(path)
    asyncio.run(qemu_migrate.restore(Qmp(back), lambda: True, path, loaded.offset))
    assert back.loaded == STREAM
    # Neither QEMU was told the file's path, and what it was given was a pipe.
    for cmd, args in qemu.sent + back.sent:
        assert str(path) not in json.dumps(args), (cmd, args)
    assert qemu.pipes == [True] and back.pipes == [True]
    assert ("migrate", {"channels": [{"channel-type": "main", "addr": {
        "transport": "socket", "type": "fd", "str": qemu_migrate.SAVE_FD}}]}) in qemu.sent

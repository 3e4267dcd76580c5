"""qemu/hostfds.py: the serial files and channel sockets xeniad opens for a confined
QEMU, and the argv that hands QEMU the fds instead of the paths."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from xenia.config.build import build_config
from xenia.config.model import DomainConfig
from xenia.config.xlcfg import parse_config
from xenia.errors import BackendError, InvalidConfig
from xenia.qemu import hostfds
from xenia.qemu.cmdline import RunFiles, build_argv
from xenia.qemu.commands import Qmp


def build(text: str) -> DomainConfig:
    return build_config(parse_config('name = "g"\n' + text, "g.cfg"), "g.cfg")


def test_fds_replace_paths_in_argv() -> None:
    cfg = build('channel = ["name=a,connection=pty", "name=b,connection=socket,path=/srv/b"]\n'
                'serial = ["pty", "file:/var/log/s", "null"]')
    args = build_argv(cfg, uuid="u", accel="tcg", files=RunFiles(Path("/run/x")),
                      host_fds={"serial1": 7, "channel1": 9})
    assert args[args.index("-add-fd") + 1] == "fd=7,set=1"
    assert "file,id=serial1,path=/dev/fdset/1,append=on" in args
    assert "socket,id=channel1,fd=9,server=on,wait=off" in args
    assert "socket,id=channel0,path=/run/x/channel0.sock,server=on,wait=off" in args
    assert not any("/var/log/s" in a or "/srv/b" in a for a in args)


def test_open_host_fds_makes_file_and_listening_socket(tmp_path: Path) -> None:
    log, sock = tmp_path / "ser.log", tmp_path / "ch.sock"
    log.write_text("kept\n")
    cfg = build(f'serial = ["pty", "file:{log}"]\n'
                f'channel = ["name=a,connection=socket,path={sock}"]')
    fds = hostfds.open_host_fds(cfg)
    try:
        assert set(fds) == {"serial1", "channel0"}
        os.write(fds["serial1"], b"more\n")
        assert log.read_text() == "kept\nmore\n"  # appended, never truncated
        assert os.get_inheritable(fds["serial1"]) is False  # only pass_fds hands it on
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(sock))  # listening already, before any QEMU
        bound = hostfds.bound_sockets(cfg)
    finally:
        hostfds.close_host_fds(fds)
    # A later domain bound the same path since: its socket is not removed.
    hostfds.close_host_fds(hostfds.open_host_fds(cfg))
    hostfds.remove_sockets(bound)
    assert sock.is_socket()
    hostfds.remove_sockets(hostfds.bound_sockets(cfg))
    assert not sock.exists()
    new = tmp_path / "new.log"
    fds = hostfds.open_host_fds(build(f'serial = ["pty", "file:{new}"]'))
    hostfds.close_host_fds(fds)
    assert stat.S_IMODE(new.stat().st_mode) == 0o600


def test_links_and_non_sockets_are_refused_leaving_all_closed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    link = tmp_path / "link"
    link.symlink_to(victim)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(BackendError, match="serial file"):
        hostfds.open_host_fds(build(f'serial = ["pty", "file:{link}"]'))
    ok = tmp_path / "ok.log"
    with pytest.raises(InvalidConfig, match="is not a socket"):
        hostfds.open_host_fds(build(f'serial = ["pty", "file:{ok}"]\n'
                                    f'channel = ["name=a,connection=socket,path={victim}"]'))
    assert len(os.listdir("/proc/self/fd")) == before  # the serial fd was closed again
    assert victim.read_text() == "keep me" and link.is_symlink()


def test_core_goes_to_qemu_as_an_fd() -> None:
    """getfd sends the fd over the socket before naming it; the dump names only it."""
    sent: list[tuple[str, Any]] = []

    class Chan:
        async def command(self, cmd: str, args: dict[str, Any] | None = None,
                          timeout: float = 30.0) -> Any:
            sent.append((cmd, args))

        def send_fd(self, fd: int) -> None:
            sent.append(("SCM_RIGHTS", fd))

    async def run() -> None:
        q = Qmp(Chan())
        await q.getfd("dump-1", 5)
        await q.dump_guest_memory("dump-1")

    asyncio.run(run())
    assert sent == [("SCM_RIGHTS", 5), ("getfd", {"fdname": "dump-1"}),
                    ("dump-guest-memory", {"paging": False, "protocol": "fd:dump-1"})]

"""A QMP session to one QEMU: commands, and events handed to a callback.

Thin layer over `qemu.qmp.QMPClient` that turns every failure into a XeniaError with a
message naming the command, so callers never see the library's exception types.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError

from xenia.errors import BackendError

log = logging.getLogger(__name__)

# The library logs every disconnect at ERROR; a guest powering off is not an error.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

EventHandler = Callable[[str, dict[str, Any]], Awaitable[None]]


class QMPSession:
    """One QMP connection. `on_event` gets (event name, data) for every event.
    `check_peer`, if given, sees the connected socket before the library does (and before
    anything is sent): it raises BackendError to refuse the listener."""

    def __init__(self, name: str, path: Path,
                 check_peer: Callable[[socket.socket], None] | None = None) -> None:
        self.name = name
        self.path = path
        self._check_peer = check_peer
        self._client = QMPClient(name)
        self._listener: EventListener | None = None
        self._pump: asyncio.Task[None] | None = None

    async def connect(self, on_event: EventHandler | None = None, timeout: float = 10.0) -> None:
        try:
            await asyncio.wait_for(self._open(), timeout)
        except (TimeoutError, QMPError, OSError) as e:
            raise BackendError(
                f"Failed to connect to QMP of {self.name} at {self.path}: {e}"
            ) from e
        if on_event is not None:
            self._listener = EventListener()
            self._client.register_listener(self._listener)
            self._pump = asyncio.create_task(self._run_pump(on_event), name=f"qmp-{self.name}")

    async def _open(self) -> None:
        """Connect to `path` ourselves and check the listener before any QMP byte moves;
        then qemu.qmp takes the socket as it is."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, str(self.path))
        except BaseException:
            sock.close()
            raise
        if self._check_peer is not None:
            self._check_peer(sock)  # closes it and raises if it is not the domain's QEMU
        await self._client.connect(sock)

    async def _run_pump(self, on_event: EventHandler) -> None:
        assert self._listener is not None
        async for ev in self._listener:
            try:
                data: dict[str, Any] = dict(ev.get("data") or {})  # type: ignore[call-overload]
                await on_event(str(ev["event"]), data)
            except Exception:  # one bad handler must not stop the event stream
                log.exception("handling QMP event %s of %s", ev.get("event"), self.name)

    async def execute(self, cmd: str, args: dict[str, Any] | None = None,
                      timeout: float = 30.0) -> Any:
        try:
            return await asyncio.wait_for(self._client.execute(cmd, args), timeout)
        except ExecuteError as e:
            raise BackendError(f"Failed {cmd} on {self.name}: {e.error.error.desc}") from e
        except (TimeoutError, QMPError, OSError) as e:
            raise BackendError(f"Failed {cmd} on {self.name}: QMP {type(e).__name__} {e}") from e

    def send_fd(self, fd: int) -> None:
        """Pass `fd` over the QMP socket (SCM_RIGHTS); a getfd must follow."""
        try:
            self._client.send_fd_scm(fd)
        except (QMPError, OSError, AssertionError) as e:
            raise BackendError(f"Failed to pass a file to {self.name} over QMP: {e}") from e

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
        if self._listener is not None:
            try:
                self._client.remove_listener(self._listener)
            except Exception:
                pass
            self._listener = None
        # After QEMU quit, disconnect() re-raises the reader's EOFError; nothing to do.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._client.disconnect(), 5)

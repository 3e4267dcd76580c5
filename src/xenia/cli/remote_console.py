"""`xenia console DOM` for a domain on another cluster member.

The CLI opens the WebSocket /v1/domains/{ref}/console on its own xeniad's UNIX socket;
xeniad relays it to the owning member (cluster/console.py). Two threads copy between that
WebSocket and one end of a socket pair, and the local console's attach_socket() works on
the other end: the escape key, raw mode, detach and the pipes' linger are the same code.

The relay reports a failure as one text message (JSON {"error", "message"}) before it
closes; console data is only ever binary messages.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from xenia.cli import console as con
from xenia.errors import KINDS, BackendError, XeniaError

if TYPE_CHECKING:  # websockets is imported only on this path (CLI start-up time)
    from websockets.sync.client import ClientConnection

OPEN_TIMEOUT = 20.0  # the relay's own connect to the member is bounded at 10 s


def _error(text: str, ref: str) -> XeniaError:
    try:
        body = json.loads(text)
        return KINDS.get(str(body.get("error")), XeniaError)(str(body["message"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        return BackendError(f"Failed to attach to the console of '{ref}': the relay sent "
                            f"an unreadable error ({text[:100]!r})")


class Stream:
    """A console WebSocket seen as a stream socket (`self.sock`). The end of either side
    ends the other: the WebSocket's close shuts the socket; the socket's close (a detach)
    closes the WebSocket. `error`: why the relay ended, if it broke or was refused."""

    def __init__(self, ws: ClientConnection, ref: str, stack: contextlib.ExitStack) -> None:
        self.ws = ws
        self._stack = stack  # the connect()'s context: websockets 15+ wants one
        self.ref = ref
        self.error: XeniaError | None = None
        self.ready = threading.Event()  # the member's console is connected, or the end
        self.connected = False
        self.sock, self._theirs = socket.socketpair()
        self._threads = [threading.Thread(target=self._down, daemon=True),
                         threading.Thread(target=self._up, daemon=True)]
        for t in self._threads:
            t.start()

    def _down(self) -> None:  # WebSocket -> socket
        from websockets.exceptions import ConnectionClosedError

        try:
            for msg in self.ws:
                if isinstance(msg, str):
                    self.error = _error(msg, self.ref)
                    return
                if not msg:  # the relay's "connected"
                    self.connected = True
                    self.ready.set()
                    continue
                self._theirs.sendall(msg)
        except ConnectionClosedError as e:
            self.error = BackendError(f"Failed to relay the console of '{self.ref}': the "
                                      f"connection to xeniad broke ({e})")
        except OSError:
            pass  # the other end was closed: a detach
        finally:
            self.ready.set()
            # EOF to attach_socket(), which then returns.
            with contextlib.suppress(OSError):
                self._theirs.shutdown(socket.SHUT_RDWR)

    def _up(self) -> None:  # socket -> WebSocket
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(OSError, ConnectionClosed):
            while data := self._theirs.recv(65536):
                self.ws.send(data)
        self.ws.close()

    def wait_ready(self, timeout: float = OPEN_TIMEOUT) -> None:
        """Until the member's console is connected; its error if the relay ended first."""
        if self.ready.wait(timeout) and self.connected:
            return
        self.sock.close()
        if self.error is None:
            self.error = BackendError(f"Failed to attach to the console of '{self.ref}': the "
                                      "relay ended, or had not reached the member's console "
                                      f"in {timeout:.0f} s; see xeniad's log")
        self.finish()

    def finish(self, timeout: float = 5.0) -> None:
        """After attach_socket() returned (it closed self.sock): wait for the copies to
        end and the WebSocket to close; raise the relay's error, if it had one."""
        self.sock.close()  # (attach_socket() closed it already, unless it never ran)
        self.ws.close()
        for t in self._threads:
            t.join(timeout)
        self._theirs.close()
        self._stack.close()
        if self.error is not None:
            raise self.error


def open_stream(api_socket: Path, ref: str) -> Stream:
    from websockets.exceptions import InvalidStatus, WebSocketException
    from websockets.sync.client import unix_connect

    stack = contextlib.ExitStack()
    try:
        ws = stack.enter_context(unix_connect(
            str(api_socket), f"ws://xeniad/v1/domains/{ref}/console",
            open_timeout=OPEN_TIMEOUT, compression=None, max_size=None))
    except InvalidStatus as e:
        raise BackendError(f"Failed to attach to the console of '{ref}': xeniad refused "
                           f"it (HTTP {e.response.status_code}); see its log") from e
    except (OSError, TimeoutError, WebSocketException) as e:
        raise BackendError(f"Failed to attach to the console of '{ref}': cannot open the "
                           f"relay on {api_socket} ({e}); is xeniad running?") from e
    return Stream(ws, ref, stack)


def attach(api_socket: Path, ref: str, escape: bytes = con.ESCAPE,
           connected: Callable[[], object] | None = None) -> None:
    """The interactive console of `ref`, a domain of another cluster member.
    `connected`: called once the member's console is connected (create -c resumes the
    guest there, so the console shows its boot from the start)."""
    stream = open_stream(api_socket, ref)
    stream.wait_ready()
    try:
        if connected is not None:
            connected()
        con.attach_socket(stream.sock, escape=escape)
    finally:
        stream.finish()

"""Client of xeniad's API over its UNIX socket; starts a daemon when none answers.

Plain http.client rather than httpx: importing httpx costs ~100 ms, and every CLI call pays
import time (docs/decisions.md, "CLI start-up").
"""

from __future__ import annotations

import http.client
import json as jsonlib
import os
import socket
import subprocess
import sys
import time
from typing import Any

from xenia.errors import KINDS, Unreachable, XeniaError
from xenia.paths import Paths

AUTOSTART_ENV = "XENIA_NO_AUTOSTART"
START_TIMEOUT = 20.0


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("xeniad", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DryRun(Exception):  # noqa: N818 - not an error: the end of a dry run
    """Raised instead of sending a changing request under `xenia -N`."""


class Client:
    def __init__(self, paths: Paths, autostart: bool = True, dry_run: bool = False) -> None:
        self.paths = paths
        # xl -N: requests that change something are printed, not sent (reads still are,
        # so a dry run still fails where the real one would fail to find a domain).
        self.dry_run = dry_run
        self.autostart = autostart and not os.environ.get(AUTOSTART_ENV)
        self._checked = False

    def close(self) -> None:
        pass

    def _raw(self, method: str, url: str, body: Any, timeout: float | None
             ) -> tuple[int, bytes]:
        conn = UnixHTTPConnection(str(self.paths.api_socket), timeout)
        try:
            data = None if body is None else jsonlib.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, url, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    # -- daemon --------------------------------------------------------------------------
    def _answers(self) -> bool:
        try:
            self._raw("GET", "/v1/host", None, 5.0)
            return True
        except (OSError, http.client.HTTPException):
            return False

    def ensure_daemon(self) -> None:
        if self._checked:
            return
        if not self.paths.api_socket.exists() or not self._answers():
            if not self.autostart:
                raise Unreachable(
                    f"Failed to reach xeniad at {self.paths.api_socket}: it is not running; "
                    f"start it (`systemctl start xeniad` or `xeniad &`) or unset {AUTOSTART_ENV}"
                )
            self._start_daemon()
        self._checked = True

    def _start_daemon(self) -> None:
        self.paths.ensure()
        # Root-only from the start (a daemon's log can name paths and tokens' names).
        log = os.fdopen(os.open(self.paths.daemon_log,
                                os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "xenia.daemon"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._answers():
                print(f"xenia: started xeniad (pid {proc.pid}, log {self.paths.daemon_log})",
                      file=sys.stderr)
                return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        tail = ""
        try:
            tail = self.paths.daemon_log.read_text(errors="replace").strip().splitlines()[-1]
        except (OSError, IndexError):
            pass
        raise Unreachable(
            f"Failed to start xeniad: it did not answer on {self.paths.api_socket} "
            f"({tail or 'see ' + str(self.paths.daemon_log)})"
        )

    # -- requests ------------------------------------------------------------------------
    def request(self, method: str, url: str, json: Any = None,
                timeout: float | None = 300.0) -> Any:
        if self.dry_run and method != "GET":
            shown = f" {jsonlib.dumps(json, sort_keys=True)}" if json else ""
            print(f"xenia: dry run: would {method} {url}{shown}", file=sys.stderr)
            raise DryRun()
        self.ensure_daemon()
        try:
            status, body = self._raw(method, url, json, timeout)
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(f"Failed to reach xeniad at {self.paths.api_socket}: {e}") from e
        if status >= 400:
            try:
                err = jsonlib.loads(body)
                cls = KINDS.get(err.get("error", ""), XeniaError)
                message = err.get("message", body.decode(errors="replace"))
            except ValueError:
                cls, message = XeniaError, f"xeniad answered {status}: {body[:200]!r}"
            raise cls(message)
        return jsonlib.loads(body) if body else None

    def get(self, url: str) -> Any:
        return self.request("GET", url)

    def post(self, url: str, json: Any = None, timeout: float | None = 300.0) -> Any:
        return self.request("POST", url, json=json if json is not None else {}, timeout=timeout)

    def delete(self, url: str) -> Any:
        return self.request("DELETE", url)

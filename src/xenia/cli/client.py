"""Client of xeniad's API over its UNIX socket; starts a daemon when none answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import httpx

from xenia.errors import KINDS, Unreachable, XeniaError
from xenia.paths import Paths

AUTOSTART_ENV = "XENIA_NO_AUTOSTART"
START_TIMEOUT = 20.0


class Client:
    def __init__(self, paths: Paths, autostart: bool = True) -> None:
        self.paths = paths
        self.autostart = autostart and not os.environ.get(AUTOSTART_ENV)
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(paths.api_socket)),
            base_url="http://xeniad",
            timeout=httpx.Timeout(120.0, connect=5.0),
        )
        self._checked = False

    def close(self) -> None:
        self._http.close()

    # -- daemon --------------------------------------------------------------------------
    def _answers(self) -> bool:
        try:
            self._http.get("/v1/host", timeout=5.0)
            return True
        except httpx.TransportError:
            return False

    def ensure_daemon(self) -> None:
        if self._checked:
            return
        if not self._answers():
            if not self.autostart:
                raise Unreachable(
                    f"Failed to reach xeniad at {self.paths.api_socket}: it is not running; "
                    f"start it (`systemctl start xeniad` or `xeniad &`) or unset {AUTOSTART_ENV}"
                )
            self._start_daemon()
        self._checked = True

    def _start_daemon(self) -> None:
        self.paths.ensure()
        log = open(self.paths.daemon_log, "ab")  # noqa: SIM115 - handed to the child
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
                timeout: float | None = 120.0) -> Any:
        self.ensure_daemon()
        try:
            resp = self._http.request(method, url, json=json, timeout=timeout)
        except httpx.TransportError as e:
            raise Unreachable(f"Failed to reach xeniad at {self.paths.api_socket}: {e}") from e
        if resp.status_code >= 400:
            try:
                body = resp.json()
                cls = KINDS.get(body.get("error", ""), XeniaError)
                raise cls(body.get("message", resp.text))
            except ValueError:
                raise XeniaError(f"xeniad answered {resp.status_code}: {resp.text}") from None
        return resp.json() if resp.content else None

    def get(self, url: str) -> Any:
        return self.request("GET", url)

    def post(self, url: str, json: Any = None, timeout: float | None = 120.0) -> Any:
        return self.request("POST", url, json=json if json is not None else {}, timeout=timeout)

    def delete(self, url: str) -> Any:
        return self.request("DELETE", url)

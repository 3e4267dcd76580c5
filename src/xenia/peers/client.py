"""PeerClient: the daemon's client of another xeniad, over TLS pinned to a fingerprint.

The peer's certificate is checked against the pinned SHA-256 fingerprint right after the
handshake and before a byte of the request (with its token) is sent; no CA is consulted.
Errors are the same XeniaError classes the local client raises, rebuilt from the peer's
JSON error body. Stdlib http.client + ssl: no heavy import on any path.
"""

from __future__ import annotations

import asyncio
import http.client
import json as jsonlib
import socket
import ssl
from typing import TYPE_CHECKING, Any

from xenia.errors import KINDS, InvalidConfig, NotFound, Unauthorized, Unreachable, XeniaError
from xenia.peers import fingerprint as fp
from xenia.peers.address import split_hostport
from xenia.peers.kinds import PEER_KIND
from xenia.store.base import Store

if TYPE_CHECKING:
    from xenia.peers.secrets import PeerTokenFiles

DEFAULT_TIMEOUT = 30.0


class FingerprintMismatch(Unauthorized):
    """The peer's certificate is not the pinned one: maybe a man in the middle."""

    def __init__(self, message: str, actual: str) -> None:
        super().__init__(message)
        self.actual = actual


class _PinnedConnection(http.client.HTTPConnection):
    """HTTPS whose only check of the server is its certificate's fingerprint."""

    def __init__(self, host: str, port: int, timeout: float | None, pinned: str) -> None:
        super().__init__(host, port, timeout=timeout)
        self.pinned = pinned
        self.peer_der: bytes | None = None

    def connect(self) -> None:
        super().connect()
        self.sock = client_context().wrap_socket(self.sock, server_hostname=None)
        der = self.sock.getpeercert(binary_form=True)
        self.peer_der = der
        if der is None or not fp.matches(self.pinned, der):
            self.sock.close()
            raise _Mismatch(fp.of_der(der) if der else "none")


class _Mismatch(Exception):
    def __init__(self, actual: str) -> None:
        super().__init__(actual)
        self.actual = actual


def client_context() -> ssl.SSLContext:
    # No CA and no host name check: the fingerprint is checked instead, after the handshake
    # and before the request. TLS >= 1.2 still gives confidentiality and integrity.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def fetch_certificate(address: str, timeout: float = 10.0) -> tuple[str, str]:
    """(PEM, fingerprint) of the certificate a host at `address` presents, trusting nothing.

    For showing to a person (`xenia host add` without --fingerprint), like SSH's first
    connection to a host: what is shown is only as good as the person's check of it.
    """
    host, port = split_hostport(address)
    where = f"host at {address}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                client_context().wrap_socket(raw, server_hostname=None) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as e:
        raise _unreachable(where, address, e, timeout) from e
    if der is None:
        raise Unreachable(f"Failed to read the certificate of the {where}: it sent none")
    return ssl.DER_cert_to_PEM_cert(der), fp.of_der(der)


def _unreachable(who: str, address: str, e: BaseException, timeout: float | None
                 ) -> Unreachable:
    if isinstance(e, ssl.SSLError):
        cause = (f"the TLS handshake failed ({e.reason or e}); is xeniad listening there "
                 "with TLS (`xeniad --listen ADDR:PORT`)?")
    elif isinstance(e, ConnectionRefusedError):
        cause = "connection refused; is xeniad running there with `--listen ADDR:PORT`?"
    elif isinstance(e, TimeoutError):
        cause = f"no answer within {timeout:g} s" if timeout else "timed out"
    elif isinstance(e, http.client.HTTPException | ConnectionResetError):
        cause = (f"the connection closed without an answer ({type(e).__name__}); does it "
                 "speak the protocol this host expects (TLS, or plain HTTP with "
                 "--insecure-no-tls on both)?")
    elif isinstance(e, OSError):
        cause = e.strerror or str(e)
    else:
        cause = str(e)
    return Unreachable(f"Failed to reach {who} at {address}: {cause}")


class PeerClient:
    """Requests to one peer xeniad:
    `PeerClient.from_store(store, "B", tokens).request("GET", url)`."""

    def __init__(self, address: str, token: str, fingerprint: str | None, *,
                 name: str | None = None, tls: bool = True,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.host, self.port = split_hostport(address)
        self.address = address
        self.token = token
        self.tls = tls
        self.name = name
        self.timeout = timeout
        if tls and not fingerprint:
            raise InvalidConfig(
                f"Failed to set up a client of {self._who}: no certificate fingerprint to pin; "
                "give the one `xenia host info` shows on that host"
            )
        self.fingerprint = fp.normalize(fingerprint) if fingerprint else None

    @classmethod
    def from_store(cls, store: Store, name: str, tokens: PeerTokenFiles,
                   timeout: float = DEFAULT_TIMEOUT) -> PeerClient:
        """The client of the peer `name` as `xenia host add` stored it (its token in
        `tokens`, or, until moved out at start, in an older record)."""
        rec = store.obj_get(PEER_KIND, name)
        if rec is None:
            raise NotFound(
                f"Failed to find host '{name}': it is not a known peer; add it with "
                "`xenia host add NAME ADDRESS:PORT --token TOKEN` (see `xenia host list`)"
            )
        token = str(rec["token"]) if "token" in rec else tokens.read(name)
        return cls(rec["address"], token, rec.get("fingerprint"), name=name,
                   tls=rec.get("tls", True), timeout=timeout)

    @property
    def _who(self) -> str:
        return f"host '{self.name}'" if self.name else "the host"

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        if self.tls:
            assert self.fingerprint is not None
            return _PinnedConnection(self.host, self.port, timeout, self.fingerprint)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def mismatch(self, actual: str) -> FingerprintMismatch:
        """The error for a certificate that is not the pinned one (the console relay's
        WebSocket, cluster/console.py, raises it too)."""
        name = self.name or "NAME"
        return FingerprintMismatch(
            f"Failed to connect to {self._who} at {self.address}: its certificate's SHA-256 "
            f"fingerprint is {actual}, but {self.fingerprint} is pinned. Someone may be "
            "intercepting the connection (man-in-the-middle), or that host's identity was "
            "made anew. Nothing was sent. Compare with `xenia host info` on that host; if "
            f"it changed on purpose, re-pin: `xenia host remove {name}` then "
            f"`xenia host add {name} {self.address} --token TOKEN --fingerprint NEW`",
            actual,
        )

    def request(self, method: str, url: str, json: Any = None,
                timeout: float | None = None) -> Any:
        """One request; the decoded JSON answer, or the peer's error as a XeniaError."""
        timeout = self.timeout if timeout is None else timeout
        conn = self._connection(timeout)
        try:
            data = None if json is None else jsonlib.dumps(json).encode()
            headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, url, body=data, headers=headers)
            resp = conn.getresponse()
            status, body = resp.status, resp.read()
        except _Mismatch as e:
            raise self.mismatch(e.actual) from None
        except (OSError, http.client.HTTPException, ssl.SSLError) as e:
            raise _unreachable(self._who, self.address, e, timeout) from e
        finally:
            conn.close()
        return self._decode(status, body)

    def _decode(self, status: int, body: bytes) -> Any:
        if status >= 400:
            try:
                err = jsonlib.loads(body)
                cls = KINDS.get(err.get("error", ""), XeniaError)
                message = str(err.get("message") or body.decode(errors="replace"))
            except (ValueError, AttributeError):
                cls = XeniaError
                message = f"Failed {status}: {body[:200]!r}"
            raise cls(f"{message} (answer of {self._who} at {self.address})")
        try:
            return jsonlib.loads(body) if body else None
        except ValueError as e:
            raise XeniaError(
                f"Failed to read the answer of {self._who} at {self.address}: not JSON "
                f"({body[:100]!r})"
            ) from e

    async def arequest(self, method: str, url: str, json: Any = None,
                       timeout: float | None = None) -> Any:
        """request() on a worker thread, for the daemon's asyncio code."""
        return await asyncio.to_thread(self.request, method, url, json, timeout)

    def get(self, url: str, timeout: float | None = None) -> Any:
        return self.request("GET", url, timeout=timeout)

    def post(self, url: str, json: Any = None, timeout: float | None = None) -> Any:
        return self.request("POST", url, json=json if json is not None else {}, timeout=timeout)

    def delete(self, url: str, timeout: float | None = None) -> Any:
        return self.request("DELETE", url, timeout=timeout)

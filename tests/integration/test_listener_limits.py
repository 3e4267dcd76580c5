"""The TCP listener's bounds against a real xeniad, with real sockets (no guest needed).

A slowloris client holding many connections that trickle their headers: the ones past
the per-client bound are closed at once, the rest cut with a 408 after the header
timeout, and meanwhile a request on the UNIX socket answers at once. A header that never
ends is cut after the bound; an oversized header is a 400; a body above the cap is a
413 (by Content-Length, and chunked); a body that stalls is cut after the body timeout.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.integration.harness import Host, Image

pytestmark = pytest.mark.integration

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
PER_CLIENT = 20
MAX_BODY = 64 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Tcp:
    host: Host
    port: int
    token: str

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return s

    def unix_get(self, path: str) -> tuple[int, float]:
        """(status, seconds) of a GET on the UNIX socket."""
        start = time.monotonic()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.host.root / "run" / "xeniad.sock"))
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
            data = read_all(s)
        return status(data), time.monotonic() - start


def read_all(s: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0


def closed_within(s: socket.socket, seconds: float) -> tuple[bytes, float]:
    """Wait for the server to close `s`; (what it sent, when it closed)."""
    start = time.monotonic()
    s.settimeout(seconds)
    data = read_all(s)
    return data, time.monotonic() - start


@pytest.fixture(scope="module")
def tcp(tiny_image: Image) -> Iterator[Tcp]:
    h = Host(tiny_image)
    port = free_port()
    h.env.update(XENIA_TCP_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
                 XENIA_TCP_BODY_TIMEOUT=str(BODY_TIMEOUT),
                 XENIA_TCP_MAX_PER_CLIENT=str(PER_CLIENT), XENIA_TCP_MAX_BODY=str(MAX_BODY))
    try:
        h.start_daemon(20.0, "--listen", f"127.0.0.1:{port}", "--insecure-no-tls")
        token = h.xenia("host", "token", "create", "--scope", "read").stdout.strip()
        yield Tcp(h, port, token)
    finally:
        h.cleanup()


def get_host(t: Tcp) -> int:
    with t.connect() as s:
        s.sendall(f"GET /v1/host HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t.token}\r\n"
                  "connection: close\r\n\r\n".encode())
        return status(read_all(s))


def test_slowloris_is_bounded_and_the_unix_socket_still_answers(tcp: Tcp) -> None:
    assert get_host(tcp) == 200
    conns = []
    try:
        for _ in range(PER_CLIENT * 2):
            s = tcp.connect()
            s.sendall(b"GET /v1/host HTTP/1.1\r\nhost: x\r\n")
            conns.append(s)
        started = time.monotonic()
        # While they are held (and trickle a byte now and then), the UNIX socket answers.
        for _ in range(3):
            for s in conns:
                try:
                    s.sendall(b"x")
                except OSError:
                    pass  # refused ones are gone
            code, seconds = tcp.unix_get("/v1/host")
            assert code == 200 and seconds < 1.0, (code, seconds)
            time.sleep(0.3)
        results = [closed_within(s, HEADER_TIMEOUT + 5) for s in conns]
        elapsed = time.monotonic() - started
    finally:
        for s in conns:
            s.close()
    refused = [r for r in results if r[0] == b""]
    timed_out = [r for r in results if status(r[0]) == 408]
    # The first PER_CLIENT are held until the header timeout, the others closed at once.
    assert len(timed_out) >= PER_CLIENT - 1 and len(refused) >= PER_CLIENT - 1, (
        len(timed_out), len(refused))
    assert elapsed < HEADER_TIMEOUT + 4
    # Nothing was held: new requests are served again.
    assert get_host(tcp) == 200


def test_a_header_that_never_ends_is_cut(tcp: Tcp) -> None:
    with tcp.connect() as s:
        s.sendall(b"GET /v1/host HTTP/1.1\r\nx-long: ")
        start = time.monotonic()
        # Keep sending, slowly: activity must not extend the deadline.
        while time.monotonic() - start < HEADER_TIMEOUT + 3:
            try:
                s.sendall(b"a")
            except OSError:
                break
            s.settimeout(0.2)
            try:
                data = s.recv(4096)
            except TimeoutError:
                continue
            assert status(data) == 408
            break
        else:
            pytest.fail("the header was not cut")
        assert HEADER_TIMEOUT - 0.5 <= time.monotonic() - start <= HEADER_TIMEOUT + 1.5


def test_an_oversized_header_is_refused(tcp: Tcp) -> None:
    with tcp.connect() as s:
        s.sendall(b"GET /v1/host HTTP/1.1\r\nx-big: " + b"a" * (64 * 1024) + b"\r\n\r\n")
        data, _ = closed_within(s, 5)
    assert status(data) == 400


def test_a_body_above_the_cap_is_413(tcp: Tcp) -> None:
    head = (f"POST /v1/domains HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {tcp.token}\r\n"
            "content-type: application/json\r\n")
    with tcp.connect() as s:
        s.sendall(f"{head}content-length: {MAX_BODY + 1}\r\n\r\n".encode())
        data, seconds = closed_within(s, 5)
    assert status(data) == 413 and seconds < 2
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert body["error"] == "invalid-config" and "larger than" in body["message"]
    # Chunked: no length up front, cut once past the cap.
    with tcp.connect() as s:
        s.sendall(f"{head}transfer-encoding: chunked\r\n\r\n".encode())
        chunk = b"x" * 16384
        for _ in range(MAX_BODY // len(chunk) + 2):
            try:
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except OSError:
                break
        data, _ = closed_within(s, 5)
    assert status(data) == 413


def test_a_stalled_body_is_cut(tcp: Tcp) -> None:
    with tcp.connect() as s:
        s.sendall(f"POST /v1/domains HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {tcp.token}"
                  "\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{".encode())
        data, seconds = closed_within(s, BODY_TIMEOUT + 5)
    assert status(data) == 408 and BODY_TIMEOUT - 0.5 <= seconds <= BODY_TIMEOUT + 1.5

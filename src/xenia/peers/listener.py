"""serve_peers(): the host identity, and the API on TCP (TLS + tokens) beside the UNIX socket.

xeniad runs two uvicorn servers in one event loop over the same FastAPI app: the UNIX
socket's, bare (root-only socket), and this module's, on TCP, with the app behind
TokenAuth and TLS from the host identity. The TCP server leaves signals to the UNIX one:
uvicorn's handlers would otherwise replace each other, and one stop must stop both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from xenia.api.pathrule import ALLOW_ENV, allowed_from
from xenia.api.scopes import make_access_factory
from xenia.errors import BackendError, XeniaError
from xenia.paths import Paths
from xenia.peers.address import (
    DEFAULT_PORT,
    LISTEN_ENV,
    ListenSpec,
    listen_from_env_or,
    parse_listen,
)
from xenia.peers.audit import AuditLog
from xenia.peers.auth import TokenAuth
from xenia.peers.limits import BodyLimit, Limits, guarded_protocol
from xenia.peers.scopes import Grant
from xenia.peers.service import PeerService
from xenia.store.base import Store
from xenia.ui.sessions import Sessions
from xenia.ui.web import UiFront

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen", metavar="ADDR:PORT",
        help="also serve the API to other hosts on TCP, with TLS and token authentication "
             f"(default: ${LISTEN_ENV}, else off); e.g. 10.0.0.2:8443, [::]:8443; the port "
             f"defaults to {DEFAULT_PORT}")
    parser.add_argument(
        "--insecure-no-tls", action="store_true",
        help="serve --listen as plain HTTP (tokens still required, but readable on the "
             "wire); only for isolated test networks")
    parser.add_argument(
        "--allow-path", action="append", default=[], metavar="DIR",
        help="requests over TCP may use host paths (disks, cdroms, kernels, save files, "
             "pools) inside DIR as well as inside the storage pools; repeat for more "
             f"(also ${ALLOW_ENV}, colon-separated)")
    parser.add_argument(
        "--ui-listen", metavar="ADDR:PORT",
        help="also serve the web UI (and the API, tokens required) as plain HTTP on this "
             "loopback address, for an SSH tunnel (e.g. 127.0.0.1:8080); the UI is always "
             "on --listen, with TLS (default: off)")


def ui_listen_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace
                        ) -> ListenSpec | None:
    """--ui-listen: loopback only, since it is plain HTTP (a session cookie and the token
    typed at login would otherwise cross the network readable)."""
    try:
        spec = parse_listen(args.ui_listen, insecure_no_tls=False)
    except XeniaError as e:
        parser.error(e.message)
    if spec is None:
        return None
    try:
        loopback = spec.host == "localhost" or ipaddress.ip_address(spec.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        parser.error(f"--ui-listen {args.ui_listen}: give a loopback address (127.0.0.1:PORT "
                     "or [::1]:PORT): it is plain HTTP, meant for an SSH tunnel; the UI is "
                     "on --listen with TLS for other machines")
    return ListenSpec(spec.host, spec.port, tls=False)


def listen_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace
                     ) -> ListenSpec | None:
    try:
        return parse_listen(listen_from_env_or(args.listen), args.insecure_no_tls)
    except XeniaError as e:
        parser.error(e.message)


def allowed_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace
                      ) -> list[Path]:
    try:
        return allowed_from(args.allow_path, os.environ.get(ALLOW_ENV))
    except XeniaError as e:
        parser.error(e.message)


class _TcpServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The UNIX socket's server owns SIGINT/SIGTERM; serve_peers stops this one after it.
        yield


def bind_tcp(spec: ListenSpec) -> socket.socket:
    try:
        infos = socket.getaddrinfo(spec.bind_host, spec.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise BackendError(f"Failed to listen on {spec}: {e.strerror or e}") from e
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and spec.bind_host == "::":
            # [::] means every address, IPv4 ones included.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(addr)
        sock.listen(64)
    except OSError as e:
        sock.close()
        raise BackendError(
            f"Failed to listen on {spec}: {e.strerror or e}; give a free port and an address "
            "of this host to --listen (or $XENIA_LISTEN)"
        ) from e
    return sock


def protect_peer_tokens(svc: PeerService, store: Store) -> None:
    """Peer tokens out of the database into root-only files (an older Xenia kept them in
    the peer records), and the database scrubbed of them."""
    svc.peer_tokens.fix_modes()
    if svc.peer_tokens.migrate(store):
        scrub = getattr(store, "scrub", None)
        if scrub is not None:
            scrub()


def _verifier(app: FastAPI, svc: PeerService) -> Callable[[str], Grant | None]:
    """This host's tokens, then (on a cluster member) the members' credentials."""
    def verify(token: str) -> Grant | None:
        grant = svc.tokens.verify(token)
        node = getattr(app.state, "cluster", None)
        if grant is None and node is not None:
            grant = node.verify(token)
        return grant
    return verify


@contextlib.asynccontextmanager
async def serve_peers(app: FastAPI, paths: Paths, store: Store, listen: ListenSpec | None,
                      allowed: list[Path] | None = None, ui_listen: ListenSpec | None = None
                      ) -> AsyncIterator[PeerService]:
    """Make sure the identity exists; serve the API on TCP while the block runs.

    `allowed`: the directories (besides the pools') whose paths requests over TCP may use.
    `ui_listen`: a loopback address where the same stack is served as plain HTTP, for the
    web UI through an SSH tunnel (--ui-listen).
    """
    svc = PeerService(paths, store, listen)
    app.state.peers = svc
    protect_peer_tokens(svc, store)
    try:
        ident = svc.identity()
        log.info("host certificate fingerprint (SHA-256): %s", ident.fingerprint)
    except XeniaError as e:
        if listen is not None and listen.tls:
            raise SystemExit(f"xeniad: {e.message}") from e
        # Without a TLS listener the identity is only shown; the local API still works.
        log.warning("%s", e.message)
    if listen is None and ui_listen is None:
        yield svc
        return
    audit = AuditLog(paths.audit_log)
    # The web UI (ui/web.py) in front: its pages, and its session cookies as a second way
    # through TokenAuth to the same routes and checks. Tokens: this host's, then (on a
    # cluster member) the members' credentials.
    sessions = Sessions(svc.tokens.grant_by_name)
    api = TokenAuth(app, _verifier(app, svc), make_access_factory(app, allowed or []),
                    audit, session=sessions.authenticate)
    if allowed:
        log.info("paths allowed over TCP besides the pools': %s",
                 ", ".join(map(str, allowed)))
    try:
        async with contextlib.AsyncExitStack() as servers:
            if listen is not None:
                front = UiFront(api, sessions, svc.tokens.verify, secure=listen.tls,
                                audit=audit)
                ctx = svc.identity().ssl_server_context() if listen.tls else None
                if ctx is None:
                    log.warning("!!! INSECURE: the API on %s is plain HTTP (--insecure-no-tls): "
                                "tokens and everything else cross the network readable and "
                                "changeable by anyone on the path. Use it only on an isolated "
                                "test network. !!!", listen)
                await servers.enter_async_context(_serving(front, listen, ctx, "the API"))
            if ui_listen is not None:
                front = UiFront(api, sessions, svc.tokens.verify, secure=False,
                                audit=audit)
                await servers.enter_async_context(_serving(front, ui_listen, None,
                                                           "the web UI (loopback)"))
            yield svc
    finally:
        audit.close()


@contextlib.asynccontextmanager
async def _serving(asgi: Any, spec: ListenSpec, ssl_ctx: ssl.SSLContext | None, what: str
                   ) -> AsyncIterator[None]:
    """Serve `asgi` on `spec` (TLS with `ssl_ctx`) while the block runs."""
    try:
        sock = bind_tcp(spec)
    except XeniaError as e:
        raise SystemExit(f"xeniad: {e.message}") from e
    # Bounds on what anyone who reaches the port can hold: connections, header and body
    # time, body size (peers/limits.py).
    limits = Limits.from_env()
    config = uvicorn.Config(BodyLimit(asgi, limits.max_body), log_level="warning",
                            lifespan="off", timeout_graceful_shutdown=2, proxy_headers=False,
                            server_header=False, http=guarded_protocol(limits),
                            h11_max_incomplete_event_size=limits.header_bytes,
                            # A WebSocket message is bounded as a body is (uvicorn's
                            # default is 16 MiB); past it the socket closes with 1009.
                            ws_max_size=limits.max_body,
                            timeout_keep_alive=5)
    config.load()
    # Our own context rather than uvicorn's ssl_* options: uvicorn's default cipher
    # string ("TLSv1") leaves out TLS 1.2's AEAD suites; this one is Python's default.
    config.ssl = ssl_ctx
    server = _TcpServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"xeniad-tcp-{spec}")
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
    while not server.started and not task.done():
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.01)
    if not server.started:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        sock.close()
        raise SystemExit(f"xeniad: Failed to serve {what} on {spec}: the server did not start")
    log.info("xeniad serving %s on %s (%s, token required)", what, spec,
             "TLS" if ssl_ctx is not None else "plain HTTP")
    try:
        yield
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 10)
        except Exception:
            log.exception("the TCP listener on %s did not stop cleanly", spec)
        sock.close()

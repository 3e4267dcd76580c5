"""xeniad: the host daemon. One per host (per XENIA_ROOT); serves the API on a UNIX socket.

Stopping xeniad never stops a guest: domains run as daemonized QEMU processes and the next
xeniad adopts them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import setproctitle
import uvicorn

from xenia.api.app import make_app
from xenia.cluster import service as cluster
from xenia.cluster.node import ClusterNode
from xenia.cluster.publish import Publisher
from xenia.devices import spice
from xenia.drivers import qemu_migrate
from xenia.drivers.container import ContainerDriver
from xenia.drivers.qemu import QemuDriver
from xenia.engine import Engine
from xenia.errors import XeniaError
from xenia.host.history import History
from xenia.logring import RING
from xenia.network.manager import NetworkManager
from xenia.paths import Paths
from xenia.peers import listener as peers
from xenia.peers.address import ListenSpec
from xenia.peers.client import PeerClient
from xenia.peers.service import PeerService
from xenia.qemu import accel as accel_mod
from xenia.storage.manager import StorageManager
from xenia.store.sqlite import SqliteStore

log = logging.getLogger("xenia.daemon")


def bind_unix(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is created 0600: root only
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    return sock


def take_lock(paths: Paths) -> int:
    """One daemon per root: an exclusive lock on the pidfile."""
    fd = os.open(paths.daemon_pidfile, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode(errors="replace").strip()
        sys.exit(f"xeniad: already running (pid {other or '?'}) for {paths.run}")
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT after a graceful stop, which would kill xeniad
    before it detaches from its domains and closes the store; here a signal only stops
    the server, and serve() finishes the shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        yield


async def serve(paths: Paths, host_accel: str, listen: ListenSpec | None = None,
                allowed: list[Path] | None = None, boot_watchdog: int = 0,
                ui_listen: ListenSpec | None = None,
                etcd: cluster.ExternalEtcd | None = None,
                allow_plain_migration: bool = False, ha_watchdog: str = "auto",
                spice_tls_dir: Path = spice.TLS_DIR,
                migration_stall: float = qemu_migrate.STALL_SECONDS) -> None:
    store = SqliteStore(paths.db)
    storage = StorageManager(paths, store)
    network = NetworkManager(paths, store)
    await storage.start()
    await network.start()
    qemu = QemuDriver(paths, store, storage, network, host_accel, boot_watchdog)
    qemu.spice_tls_dir = spice_tls_dir
    qemu.migration_stall = migration_stall
    engine = Engine.create(paths, store, [qemu, ContainerDriver(paths, store, network)],
                           storage=storage, network=network)
    storage.set_in_use_check(qemu.devices.path_in_use)
    engine.receiver.allow_plain = allow_plain_migration
    choice = accel_mod.resolve("auto", host_accel)
    if choice.name == "tcg":
        log.warning("accelerator: TCG (%s)", choice.reason)
    else:
        log.info("accelerator: KVM")
    await engine.manager.adopt_all()
    sock = bind_unix(str(paths.api_socket))
    app = make_app(engine)
    # The UI's graphs: the last hour of counters, sampled while xeniad runs.
    app.state.history = History(engine.views)
    app.state.ha_watchdog = ha_watchdog  # the member agent's (cluster/service.py)
    sampler = asyncio.create_task(app.state.history.run(), name="xeniad-history")
    # Replicated volumes: the copies served for other hosts run again, and the state of
    # this host's mirrors is watched.
    await asyncio.to_thread(engine.replica_exports.supervise)
    replication = asyncio.create_task(engine.replication.run(), name="xeniad-replication")
    config = uvicorn.Config(app, log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=2)
    server = _Server(config)
    log.info("xeniad listening on %s", paths.api_socket)
    try:
        # The host identity, and the same app on TCP (TLS + tokens) with --listen.
        # On a cluster member, its etcd member (adopted or started, then supervised).
        # There, the member agent: lease, fencing, leader, HA (cluster/agent.py), and the
        # ClusterNode: the cluster verbs, publication, forwarding (cluster/node.py); a
        # member made while xeniad runs (cluster init/join) starts its agent then.
        async with cluster.serve_cluster(paths, etcd) as runtime, \
                peers.serve_peers(app, paths, store, listen, allowed, ui_listen) as svc:
            node = make_node(engine, paths, runtime, listen, svc)
            node.make_agent = lambda rt: cluster.serve_ha(rt, engine, app.state)
            app.state.cluster = node
            await node.start()
            try:
                await server.serve(sockets=[sock])
            finally:
                await node.stop()
    finally:
        sampler.cancel()
        replication.cancel()
        # Before the domains are let go: a QEMU started ahead is no domain to leave running.
        await engine.clone_pool.close()
        await engine.manager.detach_all()
        await network.stop()
        await storage.stop()
        store.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(paths.api_socket)
        log.info("xeniad stopped; domains keep running")


def make_node(engine: Engine, paths: Paths, runtime: cluster.ClusterRuntime | None,
              listen: ListenSpec | None, svc: PeerService) -> ClusterNode:
    """This host's part in a cluster (inactive outside one: `xenia cluster init/join`
    activate it while xeniad runs)."""
    try:
        fingerprint: str | None = svc.identity().fingerprint
    except XeniaError:
        fingerprint = None
    node = ClusterNode(engine, paths, runtime, listen, fingerprint)
    node.make_publisher = Publisher

    def member_peer(name: str) -> PeerClient | None:
        return node.peer(name) if node.is_member and name in node.members else None

    engine.sender.cluster_peer = member_peer
    engine.replication.cluster_peer = member_peer
    return node


def set_title(args: list[str]) -> None:
    """Show as `xeniad ARGS` in `ps ax` and as `xeniad` in `ps -e`/top/pgrep, however it
    was started (`python3 -m xenia.daemon`, the entry point, the CLI's autostart)."""
    setproctitle.setproctitle(" ".join(["xeniad", *args]))
    # The title above also lands in the main thread's name (comm), cut to 15 bytes.
    setproctitle.setthreadtitle("xeniad")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="xeniad", description="Xenia host daemon")
    parser.add_argument("--root", help="keep state and runtime files under this dir "
                        "(default: $XENIA_ROOT, else /var/lib/xenia and /run/xenia)")
    parser.add_argument("--accel", choices=accel_mod.ACCELS,
                        default=os.environ.get("XENIA_ACCEL", "auto"),
                        help="host default accelerator (default: auto = probe)")
    parser.add_argument("--log-level", default=os.environ.get("XENIA_LOG_LEVEL", "info"))
    parser.add_argument("--boot-watchdog", type=int, metavar="SECONDS",
                        default=os.environ.get("XENIA_BOOT_WATCHDOG", "0"),
                        help="default of the domains' boot_watchdog: a booting kernel with no "
                        "console output and no vCPU progress for this long is crashed "
                        "(default 0: off)")
    parser.add_argument("--allow-plain-migration", action="store_true",
                        default=os.environ.get("XENIA_ALLOW_PLAIN_MIGRATION") == "1",
                        help="accept incoming live migrations without TLS (default: "
                        "refused; never with --copy-storage)")
    parser.add_argument("--spice-tls-dir", type=Path, metavar="DIR",
                        default=os.environ.get("XENIA_SPICE_TLS_DIR", str(spice.TLS_DIR)),
                        help="the host's SPICE TLS certificates for spicetls_port: "
                        "ca-cert.pem, server-cert.pem, server-key.pem (default: %(default)s)")
    parser.add_argument("--migration-stall-timeout", type=float, metavar="SECONDS",
                        default=os.environ.get("XENIA_MIGRATION_STALL_TIMEOUT",
                                               str(qemu_migrate.STALL_SECONDS)),
                        help="an outgoing live migration that moves no byte for this long "
                        "is cancelled and the guest keeps running here (default: "
                        "%(default)s)")
    peers.add_arguments(parser)
    cluster.add_arguments(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.migration_stall_timeout <= 3600:
        parser.error("--migration-stall-timeout must be between 1 and 3600 seconds")
    if args.boot_watchdog < 0:
        parser.error("--boot-watchdog must be 0 (off) or a number of seconds")
    set_title(sys.argv[1:] if argv is None else argv)
    listen = peers.listen_from_args(parser, args)
    allowed = peers.allowed_from_args(parser, args)
    ui_listen = peers.ui_listen_from_args(parser, args)
    etcd = cluster.external_from_args(parser, args)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s xeniad[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    # `xenia dmesg` shows the recent lines too (logring.py).
    RING.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(RING)
    paths = Paths.from_env(args.root)
    paths.ensure()
    take_lock(paths)
    try:
        asyncio.run(serve(paths, args.accel, listen, allowed, args.boot_watchdog, ui_listen,
                          etcd, args.allow_plain_migration, args.ha_watchdog,
                          args.spice_tls_dir, args.migration_stall_timeout))
    except KeyboardInterrupt:
        pass
    except XeniaError as e:
        # E.g. a record a newer xeniad wrote (store/schema.py): say so, no traceback.
        log.error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    main()

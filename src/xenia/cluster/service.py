"""xeniad's cluster options and start-up: ClusterRuntime, made by serve_cluster().

- A host that is no cluster member (no <state>/cluster/etcd.json, no --etcd) runs as
  before: nothing of the cluster is imported, no etcd runs.
- A member: its etcd is adopted or started, a Supervisor thread keeps it running while
  xeniad runs, and stopping xeniad leaves it running (the next xeniad adopts it).
- `--etcd URL,... --etcd-ca --etcd-cert --etcd-key`: an external etcd cluster instead of
  a member of xeniad's own; then no local etcd is run.
- A client member (joined past the cluster's voter cap, voters.py): no local etcd either;
  its client reaches the voters (<state>/cluster/etcd-client.json) and follows their list.

The lease, the election and the HA controller come on top (the cluster verbs); they get
the client from ClusterRuntime.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xenia.errors import InvalidConfig
from xenia.paths import Paths

if TYPE_CHECKING:
    from xenia.cluster.agent import MemberAgent
    from xenia.cluster.client import EtcdClient
    from xenia.cluster.etcd_member import ClusterFiles, EtcdMember, Supervisor
    from xenia.cluster.pki import MemberTLS
    from xenia.cluster.voters import EndpointRefresher
    from xenia.engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExternalEtcd:
    endpoints: list[str]
    ca: Path
    cert: Path
    key: Path

    def tls(self) -> MemberTLS:
        from xenia.cluster.pki import MemberTLS

        return MemberTLS(self.ca, self.cert, self.key)


@dataclass
class ClusterRuntime:
    client: EtcdClient
    member: EtcdMember | None = None
    supervisor: Supervisor | None = None
    endpoints: list[str] = field(default_factory=list)
    host: str = ""  # this member's name in the cluster (its etcd member's name)
    # "voter" (runs an etcd member), "client" (past the voter cap: voters.py) or
    # "external" (--etcd); a client member's refresher follows the voter list.
    role: str = "voter"
    refresher: EndpointRefresher | None = None

    def close(self) -> None:
        """Stop following the voters and close the client (the etcd member keeps running)."""
        if self.refresher is not None:
            self.refresher.stop()
        self.client.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cluster store (instead of xeniad's own etcd member)")
    g.add_argument("--etcd", metavar="URL,...",
                   help="use this external etcd cluster (https://HOST:PORT, comma-separated)")
    g.add_argument("--etcd-ca", type=Path, metavar="FILE", help="CA of the etcd cluster")
    g.add_argument("--etcd-cert", type=Path, metavar="FILE", help="client certificate")
    g.add_argument("--etcd-key", type=Path, metavar="FILE", help="client certificate's key")
    env = {"1": "on", "0": "off"}.get(os.environ.get("XENIA_HA_WATCHDOG", ""), None)
    g.add_argument("--ha-watchdog", choices=("auto", "on", "off"),
                   default=env or os.environ.get("XENIA_HA_WATCHDOG") or "auto",
                   help="arm /dev/watchdog as the backstop of HA fencing on a cluster "
                   "member: auto (default: where the device exists), on (refuse to run "
                   "HA without it), off; $XENIA_HA_WATCHDOG")


def external_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace
                       ) -> ExternalEtcd | None:
    files = (args.etcd_ca, args.etcd_cert, args.etcd_key)
    if not args.etcd:
        if any(files):
            parser.error("--etcd-ca/--etcd-cert/--etcd-key need --etcd")
        return None
    if not all(files):
        parser.error("--etcd needs --etcd-ca, --etcd-cert and --etcd-key (etcd's client "
                     "traffic is TLS with client certificates)")
    for f in files:
        if not f.is_file():
            parser.error(f"{f}: no such file")
    from xenia.cluster.client import parse_endpoints
    from xenia.errors import InvalidConfig

    try:
        endpoints = parse_endpoints(args.etcd)
    except InvalidConfig as e:
        parser.error(str(e))
    return ExternalEtcd(endpoints, *files)


def _start_member(paths: Paths) -> ClusterRuntime | None:
    from xenia.cluster.client import EtcdClient
    from xenia.cluster.etcd_member import ClusterFiles, EtcdMember, MemberConfig, Supervisor

    files = ClusterFiles.of(paths)
    if not files.config.exists():
        return _start_client(files) if files.client_config.exists() else None
    member = EtcdMember(files, MemberConfig.load(files.config))
    pid, adopted = member.ensure()
    log.info("etcd member %s %s (pid %d)", member.cfg.name,
             "adopted" if adopted else "started", pid)
    endpoints = [member.cfg.client_url]
    client = EtcdClient(endpoints, files.tls)
    # The other members' client URLs, so the client fails over; not fatal here: etcd may
    # be without quorum while this host starts, and the daemon must start all the same.
    try:
        for m in client.members():
            endpoints += [u for u in m.get("clientURLs", []) if u not in endpoints]
        client.close()
        client = EtcdClient(endpoints, files.tls)
    except Exception as e:  # any XeniaError or network error: keep the local endpoint
        log.warning("could not read the etcd member list yet: %s", e)
    return ClusterRuntime(client, member, Supervisor(member).start(), endpoints,
                          member.cfg.name)


def _start_client(files: ClusterFiles) -> ClusterRuntime:
    """A client member (past the voter cap): an etcd client of the voters, no etcd."""
    from xenia.cluster.client import EtcdClient
    from xenia.cluster.voters import ClientConfig, EndpointRefresher

    cfg = ClientConfig.load(files.client_config)
    client = EtcdClient(cfg.endpoints, files.tls)
    runtime = ClusterRuntime(client, endpoints=client.endpoints, host=cfg.name, role="client")
    refresher = EndpointRefresher(client, cfg, files.client_config,
                                  promote=lambda: _promote(runtime, files))
    try:
        refresher.refresh()  # voters may have changed while xeniad was down
    except Exception as e:  # not fatal: the daemon starts without etcd all the same
        log.warning("could not read the etcd voter list yet: %s", e)
    log.info("cluster member %s: an etcd client of %s", cfg.name, ", ".join(client.endpoints))
    runtime.refresher = refresher.start()
    return runtime


def _promote(runtime: ClusterRuntime, files: ClusterFiles) -> bool:
    """This client member took a free voter seat (voters.claim_promotion): start its etcd
    member (learner, then promoted: membership.join) and make the runtime a voter's.
    Runs in the refresher's thread; a failure gives the seat back."""
    from xenia.cluster import keys, membership, voters
    from xenia.cluster.etcd_member import Supervisor

    client, name = runtime.client, runtime.host
    try:
        rec, cluster = client.get(keys.member(name)), client.get(keys.CLUSTER)
        token = keys.decode(cluster).get("etcd_token") if cluster else None
        if rec is None or not token:
            raise InvalidConfig("Failed to become an etcd voter: the cluster record has no "
                                "etcd token (a cluster made before the voter cap)")
        member = membership.join(files, name, str(keys.decode(rec)["address"]),
                                 voters.voter_urls(client), str(token))
    except BaseException:
        with contextlib.suppress(Exception):
            voters.give_back(client, name)
        raise
    # etcd.json exists now (join saved it), so the next xeniad starts a voter; only then
    # the client settings go.
    runtime.member, runtime.role = member, voters.VOTER
    runtime.supervisor = Supervisor(member).start()
    client.set_endpoints([member.cfg.client_url, *voters.voter_urls(client)])
    runtime.endpoints = client.endpoints
    files.client_config.unlink(missing_ok=True)
    log.warning("cluster member %s is an etcd voter now", name)
    return True


def start_member(paths: Paths) -> ClusterRuntime | None:
    """The runtime of a member made while xeniad runs (cluster init or join): its etcd
    adopted, supervised, and a client with every member's endpoint. Blocking."""
    return _start_member(paths)


@contextlib.asynccontextmanager
async def serve_cluster(paths: Paths, external: ExternalEtcd | None = None
                        ) -> AsyncIterator[ClusterRuntime | None]:
    """The cluster runtime while xeniad runs (None on a host outside any cluster)."""
    if external is not None:
        from xenia.cluster.client import EtcdClient

        runtime: ClusterRuntime | None = ClusterRuntime(
            EtcdClient(external.endpoints, external.tls()), endpoints=external.endpoints,
            host=socket.gethostname().split(".")[0], role="external")
    else:
        runtime = await asyncio.to_thread(_start_member, paths)
    try:
        yield runtime
    finally:
        if runtime is not None:
            if runtime.supervisor is not None:
                # Only the supervision ends: the member keeps serving the cluster.
                await asyncio.to_thread(runtime.supervisor.stop)
            await asyncio.to_thread(runtime.close)


def quorum_asker(runtime: ClusterRuntime, state: Any
                 ) -> Callable[[str], tuple[str, float]]:
    """ask(host) for the quorum probe (quorum.py): this host's etcd directly, another
    member's through its xeniad (GET /v1/cluster/quorum, TLS pinned, this member's
    credential: the ClusterNode in `state.cluster` has them once the verbs made it a
    member). Blocking; raises when the member cannot be asked."""
    from xenia.cluster.quorum import ASK_TIMEOUT, UNKNOWN, local_answer
    from xenia.errors import XeniaError

    def ask(host: str) -> tuple[str, float]:
        if host == runtime.host:
            ans = local_answer(runtime)
        else:
            node = getattr(state, "cluster", None)
            if node is None or not node.is_member:
                return UNKNOWN, 0.0
            ans = node.peer(host, timeout=ASK_TIMEOUT).request("GET", "/v1/cluster/quorum")
        if not isinstance(ans, dict):
            return UNKNOWN, 0.0
        if ans.get("etcd") == UNKNOWN:
            raise XeniaError(str(ans.get("why", "no answer")))
        return str(ans.get("etcd", UNKNOWN)), float(ans.get("for", 0.0) or 0.0)

    return ask


def make_agent(runtime: ClusterRuntime, engine: Engine, state: Any) -> MemberAgent:
    """This member's agent, made the domain manager's ownership gate and put in
    `state.ha` (the API's). Not started: `await agent.start()` (or a task of
    `agent.start_retrying()`); a host that becomes a member while xeniad runs (cluster
    init/join) calls this once its runtime exists, and `await agent.stop()` on leave."""
    from xenia.cluster.agent import MemberAgent

    def ha_storage_of(path: str) -> str | None:
        # A disk qualifies for HA on a shared pool, or replicated (then the domain may
        # restart on its replica's host only: agent.only_on).
        replica = engine.replication.replica_host_of(path)
        return engine.storage.shared_pool_of(path) or (
            f"replica on {replica}" if replica is not None else None)

    agent = MemberAgent(runtime.client, runtime.host, engine.manager, ha_storage_of,
                        lease_file=engine.paths.run / "member-lease",
                        ask=quorum_asker(runtime, state),
                        watchdog=str(getattr(state, "ha_watchdog", "auto")))
    agent.replica_host_of = engine.replication.replica_host_of
    agent.promote = engine.replica_exports.promote
    engine.manager.gate = agent
    state.ha = agent
    return agent


@contextlib.asynccontextmanager
async def serve_ha(runtime: ClusterRuntime | None, engine: Engine, state: Any
                   ) -> AsyncIterator[MemberAgent | None]:
    """On a member: the MemberAgent (lease, fencing, leader election, HA, the ownership
    gate of the domain manager), put in `state.ha` for the API. It joins in the
    background: etcd may have no quorum while xeniad starts, and the daemon must serve its
    domains all the same (HA domains start only once the lease is held)."""
    if runtime is None or not runtime.host:
        yield None
        return
    agent = make_agent(runtime, engine, state)
    task = asyncio.create_task(agent.start_retrying())
    try:
        yield agent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await agent.stop()
        engine.manager.gate = None
        state.ha = None

"""ClusterNode: this host's part in the cluster while xeniad runs (app.state.cluster).

It owns the cluster verbs' host side: init, the join token, admitting a joining host,
join, leave and remove (the etcd side is cluster/membership.py), and, while the host is a
member, the publisher (publish.py) and the member credentials.

Files, beside etcd's (<state>/cluster/, etcd_member.ClusterFiles):
- node.json: this member's name, cluster address, API address (its `--listen`);
- credential: the bearer token this member presents to the others (0600). Every member's
  credential is checked against the SHA-256 in its members/<host> record in etcd, and
  grants the `cluster` scope only: forwarded requests, cluster-internal migrations.

The join exchange, over the peer TLS channel pinned to the member's fingerprint (which
the join token carries): the joining host sends a certificate request, its own
credential's hash and its addresses; the member issues the certificate from the cluster
CA, writes the new member record (refused if the name is taken) and answers with the CA
and the etcd endpoints; the join token is revoked on that use (single use).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from xenia.cluster import keys, voters
from xenia.errors import AlreadyExists, InUse, InvalidConfig, NotFound, NotSupported, XeniaError
from xenia.paths import Paths
from xenia.peers import fingerprint as fp
from xenia.peers.address import ListenSpec, join_hostport
from xenia.peers.client import PeerClient
from xenia.peers.identity import write_atomic
from xenia.peers.scopes import Grant
from xenia.peers.tokens import TokenRegistry, hash_token, new_token

if TYPE_CHECKING:
    # etcd_member and the client import requests and etcd3gw: only a member loads them.
    from xenia.cluster.etcd_member import ClusterFiles
    from xenia.cluster.service import ClusterRuntime
    from xenia.engine import Engine

log = logging.getLogger(__name__)

JOIN_PREFIX = "XJ1"  # a join token: XJ1.<fingerprint hex>.<bearer token>
JOIN_NAME = "cluster-join-"
CLUSTER_SCOPE = "cluster"


@dataclass(frozen=True)
class NodeConfig:
    name: str
    address: str  # the cluster address (etcd's URLs, the member certificate)
    api: str  # HOST:PORT of this xeniad's TCP listener
    tls: bool = True
    cluster: str = ""

    def save(self, files: ClusterFiles) -> None:
        files.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(files.dir / "node.json", json.dumps(asdict(self)).encode(), 0o600)

    @classmethod
    def load(cls, files: ClusterFiles) -> NodeConfig | None:
        try:
            return cls(**json.loads((files.dir / "node.json").read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as e:
            raise InvalidConfig(f"Failed to read {files.dir / 'node.json'}: {e}") from None


def join_token(fingerprint: str, bearer: str) -> str:
    return f"{JOIN_PREFIX}.{fp.normalize(fingerprint).replace(':', '').lower()}.{bearer}"


def parse_join_token(text: str) -> tuple[str, str]:
    """(fingerprint, bearer token) of a join token."""
    parts = text.strip().split(".", 2)
    if len(parts) != 3 or parts[0] != JOIN_PREFIX or not parts[2]:
        raise InvalidConfig("Failed to read the join token: it is not one `xenia cluster "
                            "token` printed (XJ1.<fingerprint>.<token>); copy it whole")
    return fp.normalize(parts[1]), parts[2]


def member_record(cfg: NodeConfig, fingerprint: str, credential_sha256: str) -> dict[str, Any]:
    return {"address": cfg.address, "api": cfg.api, "tls": cfg.tls,
            "fingerprint": fingerprint, "credential_sha256": credential_sha256,
            "joined": time.time()}


class ClusterNode:
    def __init__(self, engine: Engine, paths: Paths, runtime: ClusterRuntime | None,
                 listen: ListenSpec | None, fingerprint: str | None) -> None:
        self.engine = engine
        self.paths = paths
        self._files: ClusterFiles | None = None
        self.runtime = runtime
        self.listen = listen
        self.fingerprint = fingerprint
        self.cfg = NodeConfig.load(self.files) if runtime is not None else None
        self.members: dict[str, dict[str, Any]] = {}  # name -> members/<name> record
        self._hashes: dict[str, str] = {}  # credential sha256 -> member name
        self.publisher: Any = None  # publish.Publisher while a member (started by start())
        # Makes the publisher (xeniad sets publish.Publisher; publish.py imports this
        # module, so this one does not import it).
        self.make_publisher: Callable[[ClusterNode], Any] | None = None
        # The member agent's context (lease, fencing, HA: service.serve_ha), set by xeniad;
        # entered while this host is a member, so a member made by init/join gets it too.
        self.make_agent: Callable[[ClusterRuntime], AbstractAsyncContextManager[Any]] | None \
            = None
        self._agent: contextlib.AsyncExitStack | None = None
        self.agent: Any = None  # the MemberAgent while it runs
        self.jobs: dict[str, str] = {}  # migration job id -> member, for forwarded ones

    # -- state ----------------------------------------------------------------------------
    @property
    def files(self) -> ClusterFiles:
        if self._files is None:
            from xenia.cluster.etcd_member import ClusterFiles

            self._files = ClusterFiles.of(self.paths)
        return self._files

    @property
    def is_member(self) -> bool:
        return self.runtime is not None and self.cfg is not None

    @property
    def name(self) -> str:
        return self.cfg.name if self.cfg else ""

    def client(self) -> Any:
        if self.runtime is None or self.cfg is None:
            raise NotSupported("Failed to use the cluster: this host is not a cluster member "
                               "(`xenia cluster init`, or `xenia cluster join`)")
        return self.runtime.client

    @property
    def credential_file(self) -> Any:
        return self.files.dir / "credential"

    def credential(self) -> str:
        try:
            return self.credential_file.read_text().strip()
        except FileNotFoundError:
            raise NotFound("Failed to read this member's cluster credential: "
                           f"{self.credential_file} is missing; leave and join again") from None

    def set_members(self, records: dict[str, dict[str, Any]]) -> None:
        self.members = records
        self._hashes = {str(r.get("credential_sha256")): n for n, r in records.items()
                        if r.get("credential_sha256")}

    def verify(self, token: str) -> Grant | None:
        """A member credential's rights (the `cluster` scope only), or None. Runs on the
        event loop for every TCP request: cached hashes only, no etcd read."""
        name = self._hashes.get(hash_token(token))
        return Grant(f"member:{name}", frozenset({CLUSTER_SCOPE})) if name else None

    def peer(self, host: str, timeout: float | None = None) -> PeerClient:
        """The client of member `host`'s API, with this member's credential."""
        rec = self.members.get(host)
        if rec is None:
            raise NotFound(f"Failed to reach cluster member '{host}': no such member (see "
                           "`xenia cluster status`)")
        kw = {"timeout": timeout} if timeout is not None else {}
        return PeerClient(str(rec["api"]), self.credential(), rec.get("fingerprint"),
                          name=host, tls=bool(rec.get("tls", True)), **kw)

    def _need_listener(self, doing: str) -> ListenSpec:
        if self.listen is None:
            raise NotSupported(f"Failed {doing}: xeniad does not listen on TCP, so other "
                               "members could not reach it; start it with --listen ADDR:PORT")
        if self.fingerprint is None and self.listen.tls:
            raise NotSupported(f"Failed {doing}: this host has no TLS identity")
        return self.listen

    def _not_member(self, doing: str) -> None:
        if self.is_member or self.files.config.exists() or self.files.client_config.exists():
            raise AlreadyExists(f"Failed {doing}: this host is a cluster member already "
                                "(`xenia cluster status`; `xenia cluster leave` first)")

    # -- start and stop -------------------------------------------------------------------
    async def start(self) -> None:
        """While a member: publish this host and keep the member list (publish.py)."""
        if self.runtime is None:
            return
        # The agent runs on any member, node.json or not (a member made without the
        # cluster verbs, an external etcd): HA does not depend on the verbs' files.
        if self.make_agent is not None and self._agent is None:
            self._agent = contextlib.AsyncExitStack()
            self.agent = await self._agent.enter_async_context(self.make_agent(self.runtime))
        if self.is_member and self.make_publisher is not None:
            self.publisher = self.make_publisher(self)
            await self.publisher.start()

    async def stop(self, leaving: bool = False) -> None:
        if self.publisher is not None:
            await self.publisher.stop()
            self.publisher = None
        if leaving and self.agent is not None:
            # Revoked, not left to run out: alive/<host> and a leader key on this lease go
            # at once, so the others elect at once (nothing is owned here: leave checks).
            await self.agent.stop(revoke=True)
        if self._agent is not None:
            await self._agent.aclose()
            self._agent = None
            self.agent = None

    async def _activate(self, cfg: NodeConfig) -> None:
        from xenia.cluster.service import start_member

        runtime = await asyncio.to_thread(start_member, self.paths)
        if runtime is None:
            raise NotFound("Failed to start the cluster member: its etcd settings are gone")
        self.runtime, self.cfg = runtime, cfg
        await self.start()

    # -- init, token, admit, join ----------------------------------------------------------
    async def init(self, name: str | None, address: str | None, cluster: str,
                   etcd_voters: int = voters.DEFAULT_VOTERS) -> dict[str, Any]:
        from xenia.cluster import membership
        from xenia.cluster.client import EtcdClient
        from xenia.cluster.etcd_member import MemberConfig

        doing = "to make a cluster"
        self._not_member(doing)
        voters.check_voters(etcd_voters)
        listen = self._need_listener(doing)
        cfg = NodeConfig(keys.check_host(name or _hostname()), _address(address, listen),
                         join_hostport(_address(address, listen), listen.port), listen.tls,
                         keys.check_host(cluster))
        await asyncio.to_thread(membership.init, self.files, cfg.name, cfg.address,
                                cfg.cluster)
        credential = new_token()
        try:
            def write() -> None:
                etcd_cfg = MemberConfig.load(self.files.config)
                client = EtcdClient([etcd_cfg.client_url], self.files.tls)
                try:
                    client.put(keys.CLUSTER, keys.encode({
                        "name": cfg.cluster, "created": time.time(),
                        "etcd_voters": etcd_voters, "etcd_token": etcd_cfg.token}))
                    client.put(keys.member(cfg.name), keys.encode({**member_record(
                        cfg, self.fingerprint or "", hash_token(credential)),
                        "etcd": voters.VOTER}))
                finally:
                    client.close()
            await asyncio.to_thread(write)
        except BaseException:
            await asyncio.to_thread(self._wipe)
            raise
        write_atomic(self.credential_file, credential.encode(), 0o600)
        cfg.save(self.files)
        await self._activate(cfg)
        return {"name": cfg.name, "cluster": cfg.cluster, "address": cfg.address,
                "etcd_voters": etcd_voters}

    def make_token(self) -> dict[str, Any]:
        self.client()
        listen = self._need_listener("to make a join token")
        tokens = TokenRegistry(self.engine.store)
        rec, bearer = tokens.create(JOIN_NAME + hashlib.sha256(new_token().encode())
                                    .hexdigest()[:8], [CLUSTER_SCOPE])
        return {"name": rec["name"], "address": str(listen),
                "token": join_token(self.fingerprint or "0" * 64, bearer)}

    async def admit(self, grant: Grant | None, req: dict[str, Any]) -> dict[str, Any]:
        """A joining host asks (with a join token): its certificate and the etcd endpoints."""
        from xenia.cluster.etcd_member import MemberConfig
        from xenia.cluster.pki import ClusterCA, check_address

        client = self.client()
        name = keys.check_host(str(req.get("name", "")))
        doing = f"to admit '{name}' to the cluster"
        address = check_address(str(req.get("address", "")))
        rec: dict[str, Any] = {
               "address": address, "api": str(req.get("api", "")), "tls": bool(req.get("tls")),
               "fingerprint": str(req.get("fingerprint") or ""),
               "credential_sha256": str(req.get("credential_sha256", "")),
               "joined": time.time()}
        if len(rec["credential_sha256"]) != 64 or not rec["api"]:
            raise InvalidConfig(f"Failed {doing}: the request lacks the credential's hash or "
                                "the API address")
        ca = ClusterCA.load(self.files.tls.ca.parent)
        cert = ca.issue(str(req.get("csr", "")).encode(), address)

        def write() -> tuple[bool, str, list[str], str]:
            written, role = voters.seat(client, name, rec, doing)
            urls = [u for m in client.members() for u in m.get("clientURLs", [])]
            cluster = client.get(keys.CLUSTER)
            token = keys.decode(cluster).get("etcd_token", "") if cluster else ""
            return written, role, urls, str(token)

        ok, role, urls, etcd_token = await asyncio.to_thread(write)
        if not ok:
            raise AlreadyExists(f"Failed {doing}: a member of that name exists; give the "
                                "joining host another --name, or `xenia cluster remove` it")
        if grant is not None and grant.token.startswith(JOIN_NAME):
            with contextlib.suppress(NotFound):
                TokenRegistry(self.engine.store).revoke(grant.token)  # single use
        # A cluster made before the voter cap keeps its token in the voters' settings only.
        etcd_token = etcd_token or MemberConfig.load(self.files.config).token
        assert self.cfg is not None
        return {"cluster": self.cfg.cluster, "ca_cert": ca.cert_pem.decode(),
                "ca_key": ca.key_pem.decode(), "cert": cert.decode(), "endpoints": urls,
                "etcd_token": etcd_token, "etcd_role": role, "admitted_by": self.name}

    async def join(self, address: str, token: str, name: str | None,
                   own_address: str | None) -> dict[str, Any]:
        from xenia.cluster import membership
        from xenia.cluster.client import EtcdClient
        from xenia.cluster.pki import ClusterCA, install_member, member_request

        doing = f"to join the cluster at {address}"
        self._not_member(doing)
        listen = self._need_listener(doing)
        pinned, bearer = parse_join_token(token)
        cfg = NodeConfig(keys.check_host(name or _hostname()), _address(own_address, listen),
                         join_hostport(_address(own_address, listen), listen.port), listen.tls)
        key_pem, csr = member_request(cfg.name)
        credential = new_token()
        peer = PeerClient(address, bearer, pinned, name="the cluster member")
        ans = await peer.arequest("POST", "/v1/cluster/admit", {
            "name": cfg.name, "address": cfg.address, "api": cfg.api, "tls": cfg.tls,
            "fingerprint": self.fingerprint or "", "credential_sha256": hash_token(credential),
            "csr": csr.decode()})
        cfg = NodeConfig(cfg.name, cfg.address, cfg.api, cfg.tls, str(ans["cluster"]))
        ca = ClusterCA(ans["ca_cert"].encode(), ans["ca_key"].encode())
        try:
            install_member(self.files.tls.ca.parent, ca, key_pem, ans["cert"].encode())
            if ans.get("etcd_role") == voters.CLIENT:  # past the voter cap: no etcd here
                voters.ClientConfig(cfg.name, list(ans["endpoints"])).save(
                    self.files.client_config)
            else:
                await asyncio.to_thread(membership.join, self.files, cfg.name, cfg.address,
                                        ans["endpoints"], ans["etcd_token"])
        except BaseException:
            def undo() -> None:
                with contextlib.suppress(XeniaError, OSError):
                    c = EtcdClient(ans["endpoints"], self.files.tls)
                    c.delete(keys.member(cfg.name))
                    c.close()
                self._wipe()
            await asyncio.to_thread(undo)
            raise
        write_atomic(self.credential_file, credential.encode(), 0o600)
        cfg.save(self.files)
        await self._activate(cfg)
        return {"name": cfg.name, "cluster": cfg.cluster, "admitted_by": ans["admitted_by"],
                "etcd_role": ans.get("etcd_role", voters.VOTER)}

    # -- leave, remove --------------------------------------------------------------------
    async def leave(self) -> dict[str, Any]:
        from xenia.cluster import membership

        client = self.client()
        runtime, name = self.runtime, self.name
        assert runtime is not None
        member = runtime.member
        if member is None and runtime.role != voters.CLIENT:
            raise NotSupported("Failed to leave the cluster: this host uses an external etcd "
                               "(--etcd); remove it from that cluster there")
        owned = await asyncio.to_thread(_owned_by, client, name)
        others = [n for n in await asyncio.to_thread(_member_names, client) if n != name]
        voters_now = await asyncio.to_thread(client.members) if member is not None else []
        if member is not None and len(voters_now) <= 1 and others:
            raise InUse("Failed to leave the cluster: this host runs its last etcd voter, "
                        f"and {', '.join(others)} use(s) it; they leave first")
        if owned:
            raise InUse(f"Failed to leave the cluster: this host owns HA domains "
                        f"({', '.join(owned)}); the cluster would restart them elsewhere. "
                        "Evacuate first (`xenia host evacuate "
                        f"{name}`) or turn their HA off (`xenia ha DOM off`)")
        await self.stop(leaving=True)

        def run() -> int:
            _forget(client, name)
            if member is not None:
                # The supervisor first: it would restart the etcd that leave() stops.
                if runtime.supervisor is not None:
                    runtime.supervisor.stop()
                if len(voters_now) <= 1:  # the last member: the cluster ends with it
                    member.stop()
                    member.wipe()
                else:
                    membership.leave(member, runtime.endpoints)
            runtime.close()
            self._wipe()
            return len(others)

        left = await asyncio.to_thread(run)
        self.runtime, self.cfg = None, None
        self.set_members({})
        return {"name": name, "members_left": left}

    async def remove(self, host: str) -> dict[str, Any]:
        from xenia.cluster import membership

        client = self.client()
        keys.check_host(host)
        doing = f"to remove '{host}' from the cluster"
        if host == self.name:
            raise InvalidConfig(f"Failed {doing}: that is this host; use `xenia cluster leave`")

        def run() -> None:
            rec = client.get(keys.member(host))
            if rec is None:
                raise NotFound(f"Failed {doing}: no such member (see `xenia cluster status`)")
            if client.get(keys.alive(host)) is not None:
                raise InUse(f"Failed {doing}: it is alive (it holds its lease); run `xenia "
                            "cluster leave` on it, or stop it first")
            url = f"https://{_url_host(str(keys.decode(rec).get('address')))}:2379"
            try:
                client.status(url)
            except XeniaError:
                pass  # dead, as it should be
            else:
                raise InUse(f"Failed {doing}: its etcd member at {url} still answers; run "
                            "`xenia cluster leave` on it, or stop it first")
            with contextlib.suppress(NotFound):
                membership.remove(client, host)
            _forget(client, host)

        await asyncio.to_thread(run)
        self.members.pop(host, None)
        self.set_members(self.members)
        return {"removed": host}

    def _wipe(self) -> None:
        """Forget this host's cluster files (after leave or a failed init/join)."""
        for f in ("node.json", "credential", "etcd.json", "etcd-client.json"):
            with contextlib.suppress(FileNotFoundError):
                (self.files.dir / f).unlink()
        shutil.rmtree(self.files.tls.ca.parent, ignore_errors=True)
        shutil.rmtree(self.files.data, ignore_errors=True)


def _forget(client: Any, host: str) -> None:
    """Every key about `host` but its domains' ownership (the HA controller's)."""
    for key in (keys.member(host), keys.host_facts(host), keys.maintenance(host),
                keys.fenced(host)):
        client.delete(key)
    client.delete(keys.view_of(host), prefix=True)


def _member_names(client: Any) -> list[str]:
    return [keys.host_of(kv.key, keys.MEMBERS) for kv in client.range(keys.MEMBERS)[0]]


def _address(given: str | None, listen: ListenSpec) -> str:
    """The cluster address: given, else the one xeniad listens on (not a wildcard)."""
    from xenia.cluster.pki import check_address

    address = given or listen.host
    if not address or address in ("0.0.0.0", "::"):
        raise InvalidConfig("Failed to choose this host's cluster address: xeniad listens "
                            f"on every address ({listen}); give --address IP")
    return check_address(address)


def _owned_by(client: Any, host: str) -> list[str]:
    """UUIDs of the domains whose owner key names `host` (its HA domains)."""
    kvs, _ = client.range(keys.DOMAINS)
    return [kv.key[len(keys.DOMAINS):].split("/")[0] for kv in kvs
            if kv.key.endswith("/owner") and keys.decode(kv).get("host") == host]


def _hostname() -> str:
    import socket

    return socket.gethostname().split(".")[0]


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address

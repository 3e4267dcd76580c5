"""PeerRegistry: the other hosts this one knows (store kind "peer"), like known_hosts.

A peer is a name, an address, the token it accepts from us and its pinned certificate
fingerprint. The token is kept as given (we must present it), not in the store but in a
root-only file (peers/secrets.py), and never shown by the API.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from typing import Any

from xenia.errors import AlreadyExists, InvalidConfig, Unauthorized, Unreachable, XeniaError
from xenia.peers import fingerprint as fp
from xenia.peers.address import join_hostport, split_hostport
from xenia.peers.client import FingerprintMismatch, PeerClient, fetch_certificate
from xenia.peers.kinds import PEER_KIND
from xenia.peers.secrets import PeerTokenFiles
from xenia.peers.tokens import check_name
from xenia.store.base import Store

STATUS_TIMEOUT = 5.0
ADD_TIMEOUT = 15.0
# What `xenia host list` shows of each peer's GET /v1/host.
HOST_FACTS = ("host", "qemu_version", "accel", "free_memory", "total_memory", "nr_cpus",
              "domains")


def public(rec: dict[str, Any]) -> dict[str, Any]:
    """A peer record as the API shows it: never the token."""
    return {k: rec.get(k) for k in ("name", "address", "fingerprint", "tls", "added")}


class PeerRegistry:
    def __init__(self, store: Store, tokens: PeerTokenFiles) -> None:
        self.store = store
        self.tokens = tokens

    def client(self, name: str, timeout: float | None = None) -> PeerClient:
        if timeout is None:
            return PeerClient.from_store(self.store, name, self.tokens)
        return PeerClient.from_store(self.store, name, self.tokens, timeout=timeout)

    def list(self) -> list[dict[str, Any]]:
        return [public(r) for r in self.store.obj_list(PEER_KIND)]

    async def probe(self, address: str) -> dict[str, Any]:
        """The certificate a host presents, for a person to compare before pinning it."""
        from xenia.peers.identity import describe_pem

        address = _canonical(address)
        pem, fingerprint = await asyncio.to_thread(fetch_certificate, address)
        return {"address": address, "fingerprint": fingerprint, **describe_pem(pem)}

    async def add(self, name: str, address: str, token: str, fingerprint: str | None,
                  tls: bool = True) -> dict[str, Any]:
        """Check the peer (pinned certificate, token accepted), then remember it."""
        check_name(name, "host")
        address = _canonical(address)
        if not token.strip():
            raise InvalidConfig(f"Failed to add host '{name}': the token is empty")
        if tls and not fingerprint:
            raise InvalidConfig(
                f"Failed to add host '{name}': no fingerprint to pin; give --fingerprint (from "
                "`xenia host info` on that host) or --trust after checking it"
            )
        if self.store.obj_get(PEER_KIND, name) is not None:
            raise AlreadyExists(
                f"Failed to add host '{name}': a peer of that name exists; "
                f"`xenia host remove {name}` first to replace it"
            )
        fingerprint = fp.normalize(fingerprint) if tls and fingerprint else None
        client = PeerClient(address, token.strip(), fingerprint, name=name, tls=tls,
                            timeout=ADD_TIMEOUT)
        try:
            facts = await client.arequest("GET", "/v1/host")
        except FingerprintMismatch:
            raise
        except XeniaError as e:
            if e.http_status == 401:
                raise type(e)(f"Failed to add host '{name}': it refused the token; "
                              f"{e.message}") from e
            raise
        rec = {"name": name, "address": address, "fingerprint": fingerprint, "tls": tls,
               "added": time.time()}
        # The token's file first: a record is never without its token.
        self.tokens.write(name, token.strip())
        try:
            self.store.obj_put(PEER_KIND, name, rec, create=True)
        except BaseException:
            self.tokens.delete(name)
            raise
        return {**public(rec), **_facts(facts)}

    def remove(self, name: str) -> None:
        if self.store.obj_get(PEER_KIND, name) is None:
            self.client(name)  # NotFound with the usual message
        self.store.obj_delete(PEER_KIND, name)
        self.tokens.delete(name)

    async def status(self, name: str) -> dict[str, Any]:
        """A peer's record plus whether it answers, accepts our token, and its host facts."""
        rec = self.store.obj_get(PEER_KIND, name)
        out = public(rec or {"name": name})
        out.update(reachable=False, authenticated=False, error=None)
        try:
            facts = await self.client(name, timeout=STATUS_TIMEOUT).arequest("GET", "/v1/host")
        except Unreachable as e:
            out["error"] = e.message
        except Unauthorized as e:
            # It answered, but refused our token, or its certificate is not the pinned one.
            out.update(reachable=True, error=e.message)
        except XeniaError as e:
            # Past authentication, then failed: it is reachable and takes our token.
            out.update(reachable=True, authenticated=True, error=e.message)
        else:
            out.update(reachable=True, authenticated=True, **_facts(facts))
        return out

    async def status_all(self) -> builtins.list[dict[str, Any]]:
        names = [r["name"] for r in self.store.obj_list(PEER_KIND)]
        return list(await asyncio.gather(*(self.status(n) for n in names)))


def _facts(host: Any) -> dict[str, Any]:
    if not isinstance(host, dict):
        return {}
    return {k: host.get(k) for k in HOST_FACTS}


def _canonical(address: str) -> str:
    host, port = split_hostport(address, what="host address")
    if not host:
        raise InvalidConfig(f"Failed to read the host address '{address}': no host in it")
    return join_hostport(host, port)

"""The etcd side of cluster init, join, leave and remove.

- init: a new cluster CA, this host's member certificate, a one-member etcd cluster.
- join: with credentials from a member (the CA and a certificate it issued), the new
  member is added to the running cluster with etcd's member-add API *as a learner* before
  it starts, then promoted to a voter once it has caught up. A learner does not count for
  quorum: a join whose etcd never comes up leaves the cluster's quorum as it was (adding a
  voter directly to a one-member cluster and failing to start it would stop that cluster).
  A failed join removes the member it added.
- leave: this member is removed (by the others) and its etcd stopped, its data wiped.
- remove: a dead member is removed by name, from any member.

The cluster verbs (xenia cluster init/join/...) build on these; the token exchange that
hands the CA and certificate to a joining host is theirs.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from xenia.cluster.client import EtcdClient, Timeouts
from xenia.cluster.etcd_member import ClusterFiles, EtcdMember, MemberConfig
from xenia.cluster.pki import ClusterCA, make_member
from xenia.errors import BackendError, NotFound, TimedOut, XeniaError

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
T = TypeVar("T")
PROMOTE_TIMEOUT = 30.0
ADD_TIMEOUT = 15.0
LEADER_TIMEOUT = 10.0


def _client(files: ClusterFiles, endpoints: Sequence[str]) -> EtcdClient:
    return EtcdClient(endpoints, files.tls, Timeouts(connect=0.5, request=3.0))


def wait_ready(client: EtcdClient, url: str, timeout: float = START_TIMEOUT) -> dict[str, Any]:
    """Wait until the member at `url` answers and knows a leader; its status."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            st = client.status(url)
            if int(st.get("leader", 0)):
                return st
            last = "it has no leader yet"
        except XeniaError as e:
            last = str(e)
        time.sleep(0.1)
    raise TimedOut(f"Failed to wait for the etcd member at {url}: still not ready after "
                   f"{timeout:.0f} s ({last})")


def init(files: ClusterFiles, name: str, address: str, cluster: str,
         launcher: Sequence[str] = ()) -> EtcdMember:
    """Make a new cluster: its CA, this member's certificate, a one-member etcd."""
    ca = ClusterCA.create(cluster)
    make_member(files.tls.ca.parent, ca, name, address)
    token = f"xenia-{cluster}-{secrets.token_hex(6)}"
    cfg = MemberConfig(name=name, address=address, token=token,
                       initial_cluster=f"{name}={_peer(address)}", state="new")
    cfg.save(files.config)
    member = EtcdMember(files, cfg, launcher=launcher)
    member.start()
    client = _client(files, [cfg.client_url])
    try:
        wait_ready(client, cfg.client_url)
    finally:
        client.close()
    return member


def _peer(address: str) -> str:
    return MemberConfig(name="x", address=address, token="", initial_cluster="").peer_url


def member_id(client: EtcdClient, name: str) -> int:
    for m in client.members():
        if m.get("name") == name:
            return int(m["ID"])
    raise NotFound(f"Failed to find the etcd member '{name}': the cluster has no member of "
                   "that name")


def join(files: ClusterFiles, name: str, address: str, endpoints: Sequence[str],
         token: str, launcher: Sequence[str] = ()) -> EtcdMember:
    """Join the etcd cluster reached at `endpoints` (its members' client URLs). The TLS
    files must be in place (files.tls); `token` is the cluster's initial-cluster-token."""
    client = _client(files, endpoints)
    peer_url = _peer(address)
    added = 0
    member: EtcdMember | None = None
    try:
        added, members = _add(client, peer_url)
        initial = []
        for m in members:
            mname = name if int(m["ID"]) == added else m.get("name", "")
            if not mname:
                raise BackendError(
                    f"Failed to join the etcd cluster: member {int(m['ID']):x} "
                    f"({', '.join(m.get('peerURLs', []))}) was added but never started; "
                    "remove it (xenia cluster remove) or start it first")
            initial.append(f"{mname}={m['peerURLs'][0]}")
        cfg = MemberConfig(name=name, address=address, token=token,
                           initial_cluster=",".join(initial), state="existing")
        cfg.save(files.config)
        member = EtcdMember(files, cfg, launcher=launcher)
        member.start()
        wait_ready(client, cfg.client_url)
        _promote(client, added)
        return member
    except BaseException:
        if added:
            with contextlib.suppress(XeniaError):
                client.member_remove(added)
        if member is not None:
            member.stop()
            member.wipe()
        with contextlib.suppress(FileNotFoundError):
            files.config.unlink()
        raise
    finally:
        client.close()


def _healthy(call: Callable[[], T]) -> T:
    """A reconfiguration, waiting out etcd's "unhealthy cluster": etcd refuses one until
    its leader has been connected to enough voters for 5 s, e.g. just after a join (the
    new voter does not count yet) or just after a member died (until the leader has
    noticed it is down, it still counts it)."""
    deadline = time.monotonic() + ADD_TIMEOUT
    while True:
        try:
            return call()
        except XeniaError as e:
            if "unhealthy cluster" not in str(e) or time.monotonic() > deadline:
                raise
        time.sleep(0.25)


def _add(client: EtcdClient, peer_url: str) -> tuple[int, list[dict[str, Any]]]:
    """member-add as a learner."""
    return _healthy(lambda: client.member_add(peer_url, learner=True))


def _promote(client: EtcdClient, added: int) -> None:
    """Promote the learner; etcd refuses until it has caught up with the leader."""
    deadline = time.monotonic() + PROMOTE_TIMEOUT
    while True:
        try:
            client.member_promote(added)
            return
        except BackendError as e:
            if "not in sync" not in str(e) or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def leave(member: EtcdMember, endpoints: Sequence[str]) -> None:
    """Remove this member from the cluster, stop its etcd and wipe its data."""
    client = _client(member.files, [e for e in endpoints if e != member.cfg.client_url]
                     or endpoints)
    try:
        mid = member_id(client, member.cfg.name)
        others = [m for m in client.members() if int(m["ID"]) != mid]
        _hand_over_leadership(client, member.cfg.client_url, mid, others)
        _healthy(lambda: client.member_remove(mid))
        _wait_for_leader(client, others)
    finally:
        client.close()
    member.stop()
    member.wipe()
    with contextlib.suppress(FileNotFoundError):
        member.files.config.unlink()


def _hand_over_leadership(client: EtcdClient, own_url: str, mid: int,
                          others: list[dict[str, Any]]) -> None:
    """A leader that removes itself steps down and leaves the others leaderless for an
    election timeout (a full run: `cluster status` on the one member left answered "no
    quorum" right after the other left). Handing leadership over first avoids that gap;
    best effort: if it fails, the election still comes."""
    voters = [m for m in others if not m.get("isLearner")]
    if not voters:
        return
    try:
        if int(client.status(own_url).get("leader", 0)) != mid:
            return
        client.move_leader(own_url, int(voters[0]["ID"]))
    except XeniaError as e:
        log.warning("leaving the cluster as etcd's leader: %s; the others elect one", e)


def _wait_for_leader(client: EtcdClient, others: list[dict[str, Any]]) -> None:
    """Return once a remaining member reports a leader, so the cluster this member left is
    usable when `leave` returns; bounded, since it is the others' business."""
    urls = [u for m in others if not m.get("isLearner") for u in m.get("clientURLs", [])]
    deadline = time.monotonic() + LEADER_TIMEOUT
    while urls and time.monotonic() < deadline:
        for url in urls:
            with contextlib.suppress(XeniaError):
                if int(client.status(url).get("leader", 0)):
                    return
        time.sleep(0.2)
    if urls:
        log.warning("the members left (%s) had no etcd leader %.0f s after this one left",
                    ", ".join(urls), LEADER_TIMEOUT)


def remove(client: EtcdClient, name: str) -> None:
    """Remove the (dead) member `name` from the cluster."""
    mid = member_id(client, name)
    _healthy(lambda: client.member_remove(mid))

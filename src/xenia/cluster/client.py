"""EtcdClient: Xenia's etcd v3 client, over etcd's HTTP/JSON gateway, with failover.

Each endpoint is an etcd3gw client (requests underneath) with the cluster's TLS files.
What this class adds (docs/decisions.md, "etcd client" has the measurements):

- Several endpoints. A call goes to the endpoint that answered last; one that fails is
  skipped for COOLDOWN seconds and the call moves to the next at once. An attempt is
  bounded by a connect timeout and a read timeout, so a dead or cut-off member costs at
  most connect+read per call, never a back-off of minutes.
- Every request carries gRPC metadata `hasleader=true` (the gateway's Grpc-Metadata-
  header): a member that has no leader answers "no leader" at once instead of holding a
  write for etcd's 7 s request timeout. That is how quorum loss fails fast.
- Errors are XeniaErrors: QuorumLost (no member with a leader answered) and Unreachable
  (no member answered at all) say which member said what.
- Blocking only: every method does network I/O, so calling one on the daemon's event loop
  raises RuntimeError at once. Use asyncio.to_thread (or a thread of your own).

Watches are in cluster/watch.py, the member lease and fencing in cluster/lease.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import etcd3gw
import requests
from etcd3gw import exceptions as gwerr

from xenia.cluster.kv import KV, Compare, Op, TxnResult, b64, prefix_end
from xenia.cluster.pki import MemberTLS
from xenia.errors import BackendError, InvalidConfig, NotFound, Unreachable

# An endpoint that failed goes to the back of the line for this long.
COOLDOWN = 2.0
# etcd's errors that mean "this member cannot serve this now; another may": no leader,
# a leader change during the request, a request that timed out inside etcd.
_RETRYABLE = ("no leader", "leader changed", "timed out", "deadline exceeded",
              "not capable", "too many requests", "stopped", "unhealthy")


class QuorumLost(Unreachable):
    """Members answer, but none has a leader: the cluster has no quorum."""


@dataclass(frozen=True)
class Timeouts:
    connect: float = 0.5  # a TCP+TLS connect on a LAN takes milliseconds
    request: float = 2.0  # one attempt's read timeout (etcd commits in milliseconds)


def parse_endpoints(text: str | Sequence[str]) -> list[str]:
    """`https://a:2379,https://b:2379` (or a list) -> checked, deduplicated URLs."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        scheme, sep, rest = item.partition("://")
        host, _, port = rest.rpartition(":")
        if sep == "" or scheme != "https" or not host or not port.isdigit():
            raise InvalidConfig(
                f"Failed to read the etcd endpoint '{item}': give https://HOST:PORT (client "
                "traffic is always TLS), e.g. https://192.0.2.10:2379"
            )
        out.append(item.rstrip("/"))
    if not out:
        raise InvalidConfig("Failed to read the etcd endpoints: none given")
    return list(dict.fromkeys(out))


def _etcd_message(err: gwerr.Etcd3Exception) -> str:
    text = err.detail_text or ""
    try:
        body = json.loads(text)
        return str(body.get("error") or body.get("message") or text)
    except (ValueError, AttributeError):
        return text.strip() or type(err).__name__


class _Endpoint:
    """One member's gateway: its own requests.Session (connection pool)."""

    def __init__(self, url: str, tls: MemberTLS, timeouts: Timeouts) -> None:
        self.url = url
        scheme, _, rest = url.partition("://")
        host, _, port = rest.rpartition(":")
        session = requests.Session()
        # Never the environment's CA bundle (REQUESTS_CA_BUNDLE overrides session.verify)
        # nor its HTTP proxies: etcd traffic is checked against the cluster CA, direct.
        session.trust_env = False
        session.verify = str(tls.ca)
        session.cert = (str(tls.cert), str(tls.key))
        session.headers["Grpc-Metadata-Hasleader"] = "true"
        self.session = session
        self.gw = etcd3gw.Etcd3Client(host=host.strip("[]"), port=int(port), protocol=scheme,
                                      session=session, api_path="/v3/",
                                      # passed on to requests, which takes (connect, read)
                                      timeout=(timeouts.connect,  # type: ignore[arg-type]
                                               timeouts.request))
        self.failed_at = 0.0

    def post(self, path: str, body: dict[str, Any], need_leader: bool = True
             ) -> dict[str, Any]:
        # need_leader=False drops the session's hasleader metadata (None removes a session
        # header in requests): a serializable read answers from a member with no leader.
        headers = None if need_leader else {"Grpc-Metadata-Hasleader": None}
        return dict(self.gw.post(self.gw.get_url(path), json=body, headers=headers))

    def close(self) -> None:
        self.session.close()


class EtcdClient:
    def __init__(self, endpoints: Sequence[str], tls: MemberTLS,
                 timeouts: Timeouts | None = None) -> None:
        missing = tls.missing()
        if missing:
            raise InvalidConfig(
                f"Failed to set up the etcd client: {', '.join(map(str, missing))} missing; "
                "this host has no cluster credentials (join the cluster first)"
            )
        self.tls = tls
        self.timeouts = timeouts or Timeouts()
        self._eps = [_Endpoint(u, tls, self.timeouts) for u in parse_endpoints(endpoints)]
        self._lock = threading.Lock()
        self._current = self._eps[0]

    @property
    def endpoints(self) -> list[str]:
        return [e.url for e in self._eps]

    def set_endpoints(self, urls: Sequence[str]) -> None:
        """Use these endpoints from now on (the voters changed): the ones kept keep their
        connections and failure times, new ones are added at the end. The dropped ones are
        not closed: a call in another thread may be using one; they go with it."""
        wanted = parse_endpoints(urls)
        with self._lock:
            kept = [e for e in self._eps if e.url in wanted]
            have = {e.url for e in kept}
            self._eps = kept + [_Endpoint(u, self.tls, self.timeouts) for u in wanted
                                if u not in have]
            if self._current not in self._eps:
                self._current = self._eps[0]

    def close(self) -> None:
        for e in self._eps:
            e.close()

    # -- failover -------------------------------------------------------------------------

    def _order(self) -> list[_Endpoint]:
        """The last good endpoint, then the healthy ones, then those that failed lately
        (oldest failure first): a recovered member is used again after COOLDOWN."""
        now = time.monotonic()
        with self._lock:
            cur = self._current
        rest = [e for e in self._eps if e is not cur]
        fresh = [e for e in rest if now - e.failed_at >= COOLDOWN]
        stale = sorted((e for e in rest if now - e.failed_at < COOLDOWN),
                       key=lambda e: e.failed_at)
        if now - cur.failed_at < COOLDOWN:
            return fresh + sorted([cur, *stale], key=lambda e: e.failed_at)
        return [cur, *fresh, *stale]

    def call(self, path: str, body: dict[str, Any], doing: str, need_leader: bool = True
             ) -> dict[str, Any]:
        """POST `body` to the gateway path on the first endpoint that can serve it.

        A request whose answer was lost (read timeout) may have been applied; it is sent
        again to the next member. Puts and deletes do not mind; a transaction's caller
        makes its write recognisable (keys.claim() writes a nonce and reads it back).
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(f"EtcdClient {doing} called on an event loop: run it in a "
                               "thread (asyncio.to_thread)")
        causes: list[str] = []
        no_leader = 0
        for ep in self._order():
            try:
                answer = ep.post(path, body, need_leader)
            except (gwerr.ConnectionFailedError, gwerr.ConnectionTimeoutError,
                    gwerr.InternalServerError) as e:
                msg = _etcd_message(e)
                if not any(word in msg for word in _RETRYABLE) and isinstance(
                        e, gwerr.InternalServerError):
                    raise BackendError(f"Failed {doing}: etcd at {ep.url}: {msg}") from None
                no_leader += "no leader" in msg
                causes.append(f"{ep.url}: {msg or 'no answer'}")
                ep.failed_at = time.monotonic()
                continue
            except gwerr.Etcd3Exception as e:
                msg = _etcd_message(e)
                if "lease not found" in msg:
                    raise NotFound(f"Failed {doing}: the lease is gone (it expired or was "
                                   "revoked)") from None
                raise BackendError(f"Failed {doing}: etcd at {ep.url}: {msg}") from None
            except (requests.RequestException, OSError, ValueError) as e:
                causes.append(f"{ep.url}: {e}")
                ep.failed_at = time.monotonic()
                continue
            with self._lock:
                self._current = ep
            return answer
        detail = "; ".join(causes)
        if no_leader:
            raise QuorumLost(
                f"Failed {doing}: the etcd cluster has no quorum ({no_leader} of "
                f"{len(self._eps)} members answer without a leader; {detail}); writes and "
                "failover wait until a majority of the members are back"
            )
        raise Unreachable(f"Failed {doing}: no etcd member answered ({detail}); check that "
                          "the members run and this host reaches them")

    # -- keys -----------------------------------------------------------------------------

    def get(self, key: str, serializable: bool = False) -> KV | None:
        """The key, or None. serializable: answer from the member's local copy, which may
        be stale but works without quorum (for status displays only)."""
        body: dict[str, Any] = {"key": b64(key)}
        if serializable:
            body["serializable"] = True
        kvs = self.call("/kv/range", body, f"to read {key} from etcd",
                        need_leader=not serializable).get("kvs", [])
        return KV.from_json(kvs[0]) if kvs else None

    def range(self, prefix: str, serializable: bool = False) -> tuple[list[KV], int]:
        """Every key under `prefix` (sorted by key) and the revision they were read at."""
        body: dict[str, Any] = {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
        if serializable:
            body["serializable"] = True
        answer = self.call("/kv/range", body, f"to read {prefix}* from etcd",
                           need_leader=not serializable)
        return ([KV.from_json(kv) for kv in answer.get("kvs", [])],
                int(answer.get("header", {}).get("revision", 0)))

    def put(self, key: str, value: bytes | str, lease: int = 0) -> int:
        """Write the key; returns the revision of the write."""
        data = value.encode() if isinstance(value, str) else value
        body: dict[str, Any] = {"key": b64(key), "value": b64(data)}
        if lease:
            body["lease"] = lease
        answer = self.call("/kv/put", body, f"to write {key} to etcd")
        return int(answer.get("header", {}).get("revision", 0))

    def delete(self, key: str, prefix: bool = False) -> int:
        """Delete the key (or every key under the prefix); returns how many were."""
        body: dict[str, Any] = {"key": b64(key)}
        if prefix:
            body["range_end"] = b64(prefix_end(key))
        answer = self.call("/kv/deleterange", body, f"to delete {key} from etcd")
        return int(answer.get("deleted", 0))

    def txn(self, compare: Sequence[Compare], success: Sequence[Op],
            failure: Sequence[Op] = ()) -> TxnResult:
        """If every comparison holds, apply `success`, else `failure`; atomically."""
        body = {"compare": [c.to_json() for c in compare],
                "success": [o.to_json() for o in success],
                "failure": [o.to_json() for o in failure]}
        keys = ", ".join(sorted({c.key for c in compare})) or "-"
        return TxnResult.from_json(self.call("/kv/txn", body,
                                             f"to run a transaction on {keys} in etcd"))

    # -- leases ---------------------------------------------------------------------------

    def lease_grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (id, TTL etcd granted; it raises a TTL below its minimum)."""
        answer = self.call("/lease/grant", {"TTL": ttl}, f"to grant a {ttl} s lease")
        return int(answer["ID"]), int(answer["TTL"])

    def lease_keepalive(self, lease: int) -> int:
        """Renew the lease; its TTL, or 0 when etcd no longer has it."""
        answer = self.call("/lease/keepalive", {"ID": lease}, f"to renew lease {lease:x}")
        return int(answer.get("result", {}).get("TTL", 0))

    def lease_revoke(self, lease: int) -> None:
        """Revoke the lease (its keys go at once); a lease already gone is fine."""
        try:
            self.call("/kv/lease/revoke", {"ID": lease}, f"to revoke lease {lease:x}")
        except NotFound:
            pass

    def lease_ttl(self, lease: int) -> int:
        """Seconds the lease has left, or -1 when it is gone."""
        answer = self.call("/kv/lease/timetolive", {"ID": lease},
                           f"to read the time left of lease {lease:x}")
        return int(answer.get("TTL", -1))

    # -- cluster --------------------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        """etcd's member list: ID, name (empty until started), peerURLs, clientURLs,
        isLearner."""
        answer = self.call("/cluster/member/list", {}, "to list the etcd members")
        return list(answer.get("members", []))

    def member_add(self, peer_url: str, learner: bool = True) -> tuple[int, list[dict[str, Any]]]:
        """Add a member (a learner by default: it does not count for quorum until promoted);
        returns its ID and the member list after the add."""
        body: dict[str, Any] = {"peerURLs": [peer_url]}
        if learner:
            body["isLearner"] = True
        answer = self.call("/cluster/member/add", body, f"to add the etcd member {peer_url}")
        return int(answer["member"]["ID"]), list(answer.get("members", []))

    def member_promote(self, member_id: int) -> None:
        self.call("/cluster/member/promote", {"ID": member_id},
                  f"to promote the etcd learner {member_id:x}")

    def member_remove(self, member_id: int) -> None:
        self.call("/cluster/member/remove", {"ID": member_id},
                  f"to remove the etcd member {member_id:x}")

    def move_leader(self, url: str, target_id: int) -> None:
        """Hand etcd's leadership to member `target_id`; only the leader (at `url`) can."""
        try:
            self._post_to(url, "/maintenance/transfer-leadership", {"targetID": target_id})
        except gwerr.Etcd3Exception as e:
            raise BackendError(f"Failed to hand etcd's leadership to member {target_id:x}: "
                               f"{_etcd_message(e)}") from None

    def status(self, url: str) -> dict[str, Any]:
        """One member's own status (leader, raft term and index, db size); asks the member
        at `url` only (an endpoint of this client or not), and works without quorum."""
        try:
            return self._post_to(url, "/maintenance/status", {})
        except gwerr.Etcd3Exception as e:
            raise Unreachable(f"Failed to read the status of etcd member {url}: "
                              f"{_etcd_message(e)}") from None

    def _post_to(self, url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A request to the member at `url` only: one of this client's endpoints, or one
        made for this request."""
        ep = next((e for e in self._eps if e.url == url), None)
        own = ep is None
        ep = ep or _Endpoint(parse_endpoints(url)[0], self.tls, self.timeouts)
        try:
            return ep.post(path, body)
        finally:
            if own:
                ep.close()

    def session_for(self, url: str) -> requests.Session:
        """The endpoint's session (watch.py streams over it)."""
        for ep in self._eps:
            if ep.url == url:
                return ep.session
        raise NotFound(f"Failed to find the etcd endpoint {url}: not an endpoint of this "
                       f"client ({', '.join(self.endpoints)})")

    def pick(self) -> str:
        """The endpoint a new stream should use: the one a call would try first."""
        return self._order()[0].url

    def mark_failed(self, url: str) -> None:
        for ep in self._eps:
            if ep.url == url:
                ep.failed_at = time.monotonic()

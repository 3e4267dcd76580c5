"""Election: one leader among the members, as a key attached to the leader's member lease.

Not etcd's own election API (/v3/election/campaign): that call blocks until elected,
and when its HTTP connection drops nobody knows whether the campaign key is still there.
A leader key written by a transaction is one short request at a time, and tying it to the
member lease makes leadership end exactly when liveness does: a leader that cannot renew
fences itself (lease.py) before its lease, and so its leader key, can expire.

The leader key's create_revision is the term. The leader passes guard() into every
ownership transaction (keys.claim): a leader that was deposed while it was deciding
fails the comparison instead of writing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from xenia.cluster.client import EtcdClient
from xenia.cluster.keys import LEADER, decode, encode
from xenia.cluster.kv import KV, Compare, Delete, Event, Get, Put
from xenia.cluster.watch import Watch
from xenia.errors import XeniaError

log = logging.getLogger(__name__)


class Election:
    def __init__(self, client: EtcdClient, host: str, lease_id: int, key: str = LEADER) -> None:
        self.client = client
        self.host = host
        self.lease_id = lease_id
        self.key = key
        self.term = 0  # create_revision of our leader key while we lead; 0 when not

    @property
    def is_leader(self) -> bool:
        return self.term != 0

    def campaign(self) -> bool:
        """One attempt: become leader if nobody is (or adopt our own key after a daemon
        restart that kept the lease). True while this host leads."""
        value = encode({"host": self.host, "lease": self.lease_id})
        res = self.client.txn([Compare.absent(self.key)],
                              [Put(self.key, value, lease=self.lease_id), Get(self.key)],
                              [Get(self.key)])
        kv = res.found[0] if res.found else None
        if kv is not None and kv.lease == self.lease_id:
            self.term = kv.create_revision
        else:
            self.term = 0
        return self.is_leader

    def leader(self) -> tuple[str, int] | None:
        """(leader host, term), or None while nobody leads."""
        kv = self.client.get(self.key)
        return (str(decode(kv).get("host", "")), kv.create_revision) if kv else None

    def guard(self) -> Compare:
        """The condition "this host still leads, in this term", for transactions."""
        return Compare.created(self.key, self.term)

    def resign(self) -> None:
        if self.term:
            self.client.txn([self.guard()], [Delete(self.key)])
            self.term = 0


class Campaign:
    """Keeps campaigning in a thread: whenever the leader key goes, tries again.
    on_change(leading) is called in that thread when this host's leadership starts or
    ends (the end also when the key is gone before this host noticed its lease was)."""

    def __init__(self, election: Election, on_change: Callable[[bool], None]) -> None:
        self.election = election
        self.on_change = on_change
        self._vacant = threading.Event()
        self._stop = threading.Event()
        self._watch: Watch | None = None
        self._thread = threading.Thread(target=self._run, name="campaign", daemon=True)

    def start(self) -> Campaign:
        # The watch first, then the first attempt: a deletion in between is not missed.
        self._watch = Watch(self.election.client, self.election.key, self._events).start()
        self._vacant.set()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._vacant.set()
        if self._watch is not None:
            self._watch.stop()
        self._thread.join(timeout=5)

    def _events(self, events: list[Event]) -> None:
        for ev in events:
            if ev.kv.key != self.election.key:
                continue
            if ev.kind == "delete" or not self._ours(ev.kv):
                self._vacant.set()

    def _ours(self, kv: KV) -> bool:
        return kv.lease == self.election.lease_id

    def _run(self) -> None:
        leading = False
        while not self._stop.is_set():
            self._vacant.wait()
            if self._stop.is_set():
                break
            self._vacant.clear()
            try:
                now = self.election.campaign()
            except XeniaError as e:
                log.warning("campaign for leader failed: %s", e)
                self._vacant.set()
                time.sleep(0.5)
                continue
            if now != leading:
                leading = now
                self.on_change(leading)

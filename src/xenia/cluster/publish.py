"""Publisher: a member puts its facts and its domains' rows into etcd, and keeps the member
list (and so the member credentials, node.verify) current.

One task on the event loop, each round's etcd I/O in a thread: a round every EVERY
seconds, at once after kick() (the API kicks after each verb that changes a domain, so
the cluster-wide list follows within one etcd round trip). A row is written only when it
changed (a quiet cluster writes nothing but the facts every FACTS_EVERY s); after a daemon
restart the first round reads what this host had published and deletes what is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from xenia.cluster import keys
from xenia.cluster.facts import domain_rows, host_facts
from xenia.errors import XeniaError

if TYPE_CHECKING:
    from xenia.cluster.node import ClusterNode

log = logging.getLogger(__name__)

EVERY = 1.0
FACTS_EVERY = 5.0
# Facts that change all the time: a change of these alone waits for FACTS_EVERY.
_NOISY = ("updated", "available_mib")


class Publisher:
    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._written: dict[str, bytes] | None = None
        self._facts: dict[str, Any] = {}
        self._facts_at = 0.0
        self.rounds = 0

    async def start(self) -> None:
        await asyncio.to_thread(self.publish_once)  # members known before the first request
        self._task = asyncio.get_running_loop().create_task(self._run(), name="publisher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def kick(self) -> None:
        self._kick.set()

    async def _run(self) -> None:
        failing = False
        while True:
            self._kick.clear()
            try:
                await asyncio.to_thread(self.publish_once)
                if failing:
                    log.info("publishing to the cluster works again")
                failing = False
            except XeniaError as e:
                if not failing:
                    log.warning("could not publish to the cluster: %s", e)
                failing = True
            except Exception:
                log.exception("publishing to the cluster")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), EVERY)

    def publish_once(self) -> None:
        node = self.node
        client = node.client()
        cfg = node.cfg
        assert cfg is not None
        try:
            facts = host_facts(node.engine, cfg.name, cfg.address, cfg.api)
            stable = {k: v for k, v in facts.items() if k not in _NOISY}
            if stable != self._facts or time.monotonic() - self._facts_at >= FACTS_EVERY:
                client.put(keys.host_facts(cfg.name), keys.encode(facts))
                self._facts, self._facts_at = stable, time.monotonic()
            self._rows(client, cfg.name)
            members, _ = client.range(keys.MEMBERS)
            node.set_members({keys.host_of(kv.key, keys.MEMBERS): keys.decode(kv)
                              for kv in members})
            self.rounds += 1
        except BaseException:
            self._written = None  # not sure what got written: read it back next round
            self._facts = {}
            raise

    def _rows(self, client: Any, name: str) -> None:
        if self._written is None:
            kvs, _ = client.range(keys.view_of(name))
            self._written = {kv.key: kv.value for kv in kvs}
        want = {keys.view(name, r["uuid"]): keys.encode(r)
                for r in domain_rows(self.node.engine, name)}
        for key, value in want.items():
            if self._written.get(key) != value:
                client.put(key, value)
                self._written[key] = value
        for key in [k for k in self._written if k not in want]:
            client.delete(key)
            del self._written[key]

"""A test stand-in for one member's xeniad, run inside the member's network namespace:
it drives the real cluster modules (etcd member, client, lease keeper, watch) on command.

Commands are JSON lines on stdin ({"id", "op", "args"}), answers JSON lines on stdout
({"id", "ok"} or {"id", "error", "kind"}); asynchronous happenings (a fence) are lines
{"event": ...}. Like xeniad, the main thread runs an asyncio loop and every etcd call runs
in a worker thread; `block` stalls that loop on purpose.

    ip netns exec NS python -m tests.integration.etcd_agent --dir DIR --run RUN
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from xenia.cluster import keys, membership
from xenia.cluster.client import EtcdClient, Timeouts
from xenia.cluster.election import Campaign, Election
from xenia.cluster.etcd_member import ClusterFiles, EtcdMember, MemberConfig, Supervisor
from xenia.cluster.kv import Event
from xenia.cluster.lease import LeaseKeeper, LeaseTiming
from xenia.cluster.watch import Watch
from xenia.errors import XeniaError

_out = threading.Lock()


def emit(msg: dict[str, Any]) -> None:
    with _out:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


class Agent:
    def __init__(self, files: ClusterFiles) -> None:
        self.files = files
        self.member: EtcdMember | None = None
        self.supervisor: Supervisor | None = None
        self.client: EtcdClient | None = None
        self.keeper: LeaseKeeper | None = None
        self.watches: dict[str, Watch] = {}
        self.seen: dict[str, list[list[Any]]] = {}
        self.campaign: Campaign | None = None
        self.leading: list[list[Any]] = []

    def _member(self) -> EtcdMember:
        if self.member is None:
            self.member = EtcdMember(self.files, MemberConfig.load(self.files.config))
        return self.member

    def _c(self) -> EtcdClient:
        assert self.client is not None, "call client first"
        return self.client

    # -- etcd member ----------------------------------------------------------------------
    def op_init(self, name: str, address: str, cluster: str) -> dict[str, Any]:
        self.member = membership.init(self.files, name, address, cluster)
        return {"url": self.member.cfg.client_url, "token": self.member.cfg.token,
                "pid": self.member.pid()}

    def op_join(self, name: str, address: str, endpoints: list[str], token: str
                ) -> dict[str, Any]:
        self.member = membership.join(self.files, name, address, endpoints, token)
        return {"url": self.member.cfg.client_url, "pid": self.member.pid()}

    def op_ensure(self) -> dict[str, Any]:
        pid, adopted = self._member().ensure()
        return {"pid": pid, "adopted": adopted}

    def op_supervise(self) -> None:
        self.supervisor = Supervisor(self._member()).start()

    def op_pid(self) -> int | None:
        return self._member().pid()

    def op_restarts(self) -> int:
        return self.supervisor.restarts if self.supervisor else 0

    def op_leave(self, endpoints: list[str]) -> None:
        if self.supervisor:
            self.supervisor.stop()
        membership.leave(self._member(), endpoints)

    def op_remove(self, name: str) -> None:
        membership.remove(self._c(), name)

    def op_wipe(self) -> None:
        self._member().wipe()

    # -- client ---------------------------------------------------------------------------
    def op_client(self, endpoints: list[str], connect: float = 0.5, request: float = 2.0
                  ) -> None:
        self.client = EtcdClient(endpoints, self.files.tls, Timeouts(connect, request))

    def op_put(self, key: str, value: str) -> int:
        return self._c().put(key, value)

    def op_get(self, key: str) -> str | None:
        kv = self._c().get(key)
        return kv.text if kv else None

    def op_timed_put(self, key: str, value: str) -> dict[str, Any]:
        t = time.monotonic()
        try:
            self._c().put(key, value)
            err, kind = None, None
        except XeniaError as e:
            err, kind = str(e), type(e).__name__
        return {"seconds": time.monotonic() - t, "error": err, "kind": kind}

    def op_members(self) -> list[dict[str, Any]]:
        return self._c().members()

    def op_status(self, url: str) -> dict[str, Any]:
        return self._c().status(url)

    def op_claim(self, uuid: str, host: str, at: float) -> dict[str, Any]:
        """Read the owner key, then claim at monotonic time `at` (both agents race)."""
        before = keys.owner_of(self._c(), uuid)
        while time.monotonic() < at:
            time.sleep(0.0005)
        won, now = keys.claim(self._c(), uuid, host, before)
        return {"won": won, "owner": now.host if now else None,
                "revision": now.mod_revision if now else 0}

    # -- lease and fencing ----------------------------------------------------------------
    def op_keeper(self, endpoints: list[str], host: str, ttl: int = 5, interval: float = 1.0,
                  margin: float = 1.5, attempt: float = 1.0) -> dict[str, Any]:
        timing = LeaseTiming(ttl=ttl, interval=interval, margin=margin, attempt=attempt)
        client = EtcdClient(endpoints, self.files.tls, Timeouts(0.5, attempt))

        def fence(reason: str) -> bool:
            emit({"event": "fence", "t": time.monotonic(), "reason": reason,
                  "last_sent": keeper.guard.last_sent if keeper.guard else 0})
            return True

        keeper = LeaseKeeper(client, fence, timing)
        self.keeper = keeper
        lease = keeper.start()
        self._c().put(keys.alive(host), keys.encode({"lease": lease}), lease=lease)
        return {"lease": lease}

    def op_keeper_state(self) -> dict[str, Any]:
        k = self.keeper
        assert k is not None and k.guard is not None
        g = k.guard
        return {"state": g.state, "last_sent": g.last_sent, "renewals": k.renewals,
                "failures": k.failures, "fenced_at": g.fenced_at, "lease": k.lease_id,
                "ttl": g.ttl, "now": time.monotonic()}

    def op_keeper_stop(self, revoke: bool = False) -> dict[str, Any]:
        assert self.keeper is not None and self.keeper.guard is not None
        self.keeper.stop(revoke=revoke)
        return {"last_sent": self.keeper.guard.last_sent, "now": time.monotonic()}

    def op_lease_ttl(self, lease: int) -> int:
        return self._c().lease_ttl(lease)

    # -- watches and election -------------------------------------------------------------
    def op_watch(self, prefix: str) -> None:
        seen = self.seen.setdefault(prefix, [])

        def got(events: list[Event]) -> None:
            t = time.monotonic()
            seen.extend([t, e.kind, e.kv.key, e.kv.mod_revision] for e in events)

        self.watches[prefix] = Watch(self._c(), prefix, got).start()

    def op_seen(self, prefix: str) -> dict[str, Any]:
        w = self.watches[prefix]
        return {"events": self.seen[prefix], "reconnects": w.reconnects}

    def op_campaign(self, host: str) -> None:
        assert self.keeper is not None
        election = Election(self._c(), host, self.keeper.lease_id)
        self.campaign = Campaign(
            election, lambda leading: self.leading.append([time.monotonic(), leading])
        ).start()

    def op_leading(self) -> list[list[Any]]:
        return self.leading


async def _handle(agent: Agent, cmd: dict[str, Any]) -> None:
    op, args = cmd["op"], cmd.get("args", {})
    try:
        if op == "block":
            # Stall the event loop as a long synchronous call in a coroutine would.
            time.sleep(args["seconds"])
            result: Any = None
        else:
            result = await asyncio.to_thread(getattr(agent, f"op_{op}"), **args)
        emit({"id": cmd["id"], "ok": result})
    except Exception as e:  # reported to the test, which fails with it
        emit({"id": cmd["id"], "error": str(e), "kind": type(e).__name__})


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--run", required=True)
    a = parser.parse_args()
    agent = Agent(ClusterFiles(Path(a.dir), Path(a.run)))
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    def reader() -> None:
        for line in sys.stdin:
            cmd = json.loads(line)
            loop.call_soon_threadsafe(
                lambda c=cmd: tasks.add(loop.create_task(_handle(agent, c))))
        loop.call_soon_threadsafe(done.set)

    threading.Thread(target=reader, daemon=True).start()
    await done.wait()
    os.kill(os.getpid(), signal.SIGKILL)  # like a crashed daemon: no clean-up of any kind


if __name__ == "__main__":
    asyncio.run(main())

"""Quorum probes: may a member that cannot renew its lease keep its HA domains running?

A member whose renewals fail cannot tell from etcd alone whether it is cut off (the
majority will expire its lease and restart its HA domains: it must fence) or whether the
whole cluster lost its etcd quorum (nobody can expire anything or claim any domain: it may
hold). So, while its renewals are late, it asks the xeniad of every etcd voter (over the
member-to-member TLS channel, with its cluster credential) what that host's own etcd
member knows, and decides at the fence deadline (docs/cluster.md, "Quorum loss", has the
arithmetic):

- each answer is one of: `leader` (that etcd member knows a leader: a quorum may exist),
  `no-leader` (it runs and knows none: its election timer ran out, so it heard nothing
  from any leader for at least one election timeout), `dead` (its process is not running:
  it acks nothing, and it comes back as a follower), `unknown` (no answer, or an etcd that
  does not answer: a frozen etcd may be a stale leader that resumes, so it proves
  nothing);
- a voter's *streak* is its run of `no-leader`/`dead` answers, each sent at most one
  election timeout after the one before; it covers from (first answer's arrival, minus one
  election timeout for `no-leader`, minus the time its xeniad has seen it not running for
  `dead`) to the last answer's send time;
- hold while a majority of the voters (this member counted) have a fresh streak covering
  at least two election timeouts, and no voter's last answer was `leader`. Anything else:
  fence, exactly as without this module.

QuorumView holds the rule with no I/O and explicit times (unit-tested); QuorumProbe runs
the rounds in a thread of its own, so a probe never delays the guard thread's fence.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

LEADER, NO_LEADER, DEAD, UNKNOWN = "leader", "no-leader", "dead", "unknown"
ELECTION = 1.0  # etcd's election timeout (etcd_member.ELECTION_MS), in seconds
PROBE_EVERY = 0.25  # a round of questions this often while renewals are late
ASK_TIMEOUT = 0.5  # one question to another member's xeniad (connect + answer)
LOCAL_TIMEOUT = 0.2  # that xeniad's question to its own etcd member
LATE = 0.1  # a renewal this late (after its interval) starts the probes
VOTERS_EVERY = 5.0  # the etcd voter list is read again this often while etcd answers


def local_answer(runtime: Any) -> dict[str, Any]:
    """What this host's etcd member knows (GET /v1/cluster/quorum); `runtime`: the
    ClusterRuntime (service.py, which imports this module), or None. Blocking."""
    member = runtime.member if runtime is not None else None
    if member is None:
        # A client member (past the voter cap) or an external etcd: never a voter, so the
        # hold rule never counts this answer (QuorumProbe asks the etcd voters only).
        role = getattr(runtime, "role", "external")
        return {"etcd": UNKNOWN, "why": f"this host runs no etcd member ({role})"}
    sup = runtime.supervisor
    since = sup.down_since if sup is not None else None
    pid = member.pid()
    if pid is None:
        return {"etcd": DEAD, "why": "its etcd process is not running",
                "for": 0.0 if since is None else round(time.monotonic() - since, 3)}
    from xenia.cluster.client import EtcdClient, Timeouts

    assert runtime is not None
    url = member.cfg.client_url
    client = EtcdClient([url], runtime.client.tls, Timeouts(LOCAL_TIMEOUT, LOCAL_TIMEOUT))
    try:
        st = client.status(url)
    except Exception as e:  # XeniaError, or a requests timeout: both say "no answer"
        if "no leader" in str(e):
            return {"etcd": NO_LEADER, "why": "etcd answered: no leader"}
        if since is not None and sup is not None and pid == sup.restarted_pid:
            # Restarted after it died and not serving yet: it has not been part of a
            # quorum since (it would have published itself and serve).
            return {"etcd": DEAD, "why": "its etcd was restarted and does not serve yet",
                    "for": round(time.monotonic() - since, 3)}
        return {"etcd": UNKNOWN, "why": f"its etcd did not answer: {e}"}
    finally:
        client.close()
    leader = int(st.get("leader", 0) or 0)
    return {"etcd": LEADER if leader else NO_LEADER, "leader": f"{leader:x}",
            "term": int(st.get("raftTerm", 0) or 0)}


@dataclass
class Streak:
    start: float  # from when the answers prove the voter acked no leader
    first_recv: float
    last_sent: float


class QuorumView:
    """The answers so far and the hold rule. Times are monotonic seconds."""

    def __init__(self, election: float = ELECTION) -> None:
        self.election = election
        self.voters: list[str] = []
        self.streaks: dict[str, Streak] = {}
        self.last: dict[str, tuple[str, float]] = {}  # host -> (answer, sent)
        self.notes: dict[str, str] = {}  # host -> why its last answer was unknown
        self._lock = threading.Lock()

    def set_voters(self, voters: list[str]) -> None:
        with self._lock:
            self.voters = sorted(set(voters))

    def record(self, host: str, answer: str, sent: float, recv: float,
               back: float = 0.0, note: str = "") -> None:
        """One answer, asked at `sent`, back at `recv`; `back`: for DEAD, how long the
        answering xeniad has seen its etcd not running."""
        with self._lock:
            self.last[host] = (answer, sent)
            self.notes[host] = note
            if answer not in (NO_LEADER, DEAD):
                self.streaks.pop(host, None)
                return
            s = self.streaks.get(host)
            look_back = self.election if answer == NO_LEADER else max(0.0, back)
            if s is None or sent - s.last_sent > self.election:
                self.streaks[host] = Streak(recv - look_back, recv, sent)
            else:
                # Each answer proves on its own: a later "dead for longer" reaches back
                # further than the first one did.
                s.start = min(s.start, recv - look_back)
                s.last_sent = max(s.last_sent, sent)

    def _with_leader(self, voters: list[str], now: float) -> list[str]:
        """Voters whose answer of the last 2 election timeouts was LEADER (lock held)."""
        return [h for h in voters if self.last.get(h, ("", 0.0))[0] == LEADER
                and self.last[h][1] >= now - 2 * self.election]

    def pending(self, now: float) -> bool:
        """A proof under way: a majority of voters on a fresh streak (of any length) and
        none with a leader. The guard may wait a little for it (lease.HOLD_GRACE)."""
        with self._lock:
            voters = list(self.voters)
            if not voters or self._with_leader(voters, now):
                return False
            fresh = [h for h in voters if (s := self.streaks.get(h)) is not None
                     and s.last_sent >= now - self.election]
            return len(fresh) >= len(voters) // 2 + 1

    def holds(self, now: float) -> tuple[float | None, str]:
        """(the moment up to which no leader is proven, or None; why) at `now`."""
        with self._lock:
            voters = list(self.voters)
            if not voters:
                return None, "the etcd voters are not known"
            need = len(voters) // 2 + 1
            with_leader = self._with_leader(voters, now)
            if with_leader:
                return None, f"{', '.join(with_leader)} still see(s) an etcd leader"
            proven = [h for h in voters if (s := self.streaks.get(h)) is not None
                      and s.last_sent >= now - self.election
                      and s.last_sent - s.start >= 2 * self.election]
            seen = "; ".join(f"{h}: {self.last.get(h, ('not asked', 0))[0]}"
                             + (f" ({self.notes[h]})" if self.notes.get(h) else "")
                             for h in voters)
        if len(proven) >= need:
            # The proof holds up to the need-th latest answer of the proven voters.
            until = sorted((self.streaks[h].last_sent for h in proven), reverse=True)[need - 1]
            return until, (f"{len(proven)} of {len(voters)} etcd voters ({', '.join(proven)}) "
                          "have had no etcd leader for 2 election timeouts")
        return None, (f"only {len(proven)} of {len(voters)} etcd voters proven without a "
                       f"leader ({need} needed; last answers: {seen})")


class QuorumProbe:
    """Rounds of questions while `needed()` says the renewals are late.

    `voters()`: the etcd voters' host names (read while etcd answers, cached here);
    `ask(host)`: that host's answer (LEADER, NO_LEADER, DEAD or UNKNOWN) and, for DEAD,
    for how long (may raise)."""

    def __init__(self, voters: Callable[[], list[str]],
                 ask: Callable[[str], tuple[str, float]],
                 needed: Callable[[], bool], clock: Callable[[], float] = time.monotonic,
                 every: float = PROBE_EVERY) -> None:
        self.view = QuorumView()
        self._voters = voters
        self._ask = ask
        self._needed = needed
        self.clock = clock
        self.every = every
        self.rounds = 0
        self.held: dict[str, Any] | None = None  # set by the guard while it holds
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=5, thread_name_prefix="quorum-ask")
        self._thread = threading.Thread(target=self._run, name="quorum-probe", daemon=True)
        self._refreshed = -1e9

    @property
    def started(self) -> bool:
        return self._thread.is_alive() or self._stop.is_set()

    def start(self) -> QuorumProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def hold(self) -> float | None:
        """The guard's question at (and after) its deadline: no I/O, answers at once."""
        ok, why = self.view.holds(self.clock())
        if ok is not None:
            if self.held is None:
                log.warning("quorum lost, failover suspended: holding the HA domains (%s)",
                            why)
                self.held = {"since": time.time(), "why": why}
            self.held["why"] = why
        else:
            if self.held is not None:
                log.warning("no longer holding: %s", why)
            self.held = None
            log.info("no hold: %s", why)
        return ok

    def renewed(self) -> None:
        self.held = None

    def pending(self) -> bool:
        return self.view.pending(self.clock())

    def _refresh_voters(self) -> None:
        try:
            self.view.set_voters(self._voters())
            self._refreshed = self.clock()
        except Exception as e:  # no etcd: keep the voters known so far
            log.debug("etcd voters not read: %s", e)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._needed():
                if self.clock() - self._refreshed > VOTERS_EVERY:
                    self._refresh_voters()
                self._stop.wait(self.every)
                continue
            start = self.clock()
            self.round()
            self._stop.wait(max(0.0, start + self.every - self.clock()))

    def round(self) -> None:
        def one(host: str) -> None:
            sent = self.clock()
            note = ""
            try:
                answer, back = self._ask(host)
            except Exception as e:
                answer, back, note = UNKNOWN, 0.0, str(e)[:200]
            self.view.record(host, answer, sent, self.clock(), back, note)

        for f in [self._pool.submit(one, h) for h in self.view.voters]:
            f.result()
        self.rounds += 1

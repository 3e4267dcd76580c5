"""LeaseKeeper and FenceGuard: a member's liveness lease and the self-fencing rule.

The rule (docs/cluster.md, "How fencing decides", has the arithmetic):

    etcd may expire the lease, and the leader restart this member's HA domains elsewhere,
    from  last_sent + TTL  on, where last_sent is the send time of the last renewal etcd
    answered. So this member stops its HA domains at  last_sent + TTL - margin, and feeds
    the watchdog only while  now + watchdog_timeout + WATCHDOG_SLACK <= last_sent + TTL
    (or after a fence that succeeded: nothing is left to protect).

Why the send time: etcd's leader sets the expiry to (time it handled the renewal) + TTL,
which is never before the send. Leader changes only lengthen a lease (the new leader
grants every lease a fresh TTL plus an election timeout). So last_sent + TTL is a lower
bound of the expiry that needs no synchronised clocks, only this host's monotonic clock.

Two threads, so that neither an event-loop stall nor a renewal stuck in the network can
delay a fence: the renewal thread sends keepalives; the guard thread sleeps until the
deadline (woken early by each renewal), fences, and feeds the watchdog. FenceGuard holds
the rule with no threads, no I/O and an injected clock (unit-tested on its own).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from xenia.cluster.client import EtcdClient
from xenia.cluster.watchdog import Watchdog
from xenia.errors import InvalidConfig, NotFound, XeniaError

log = logging.getLogger(__name__)

# Between a watchdog's timeout and the machine being stopped (a reset is immediate).
WATCHDOG_SLACK = 0.5
MIN_MARGIN = 0.5


class Clock(Protocol):
    def now(self) -> float: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()


@dataclass(frozen=True)
class LeaseTiming:
    ttl: int = 5              # the lease's TTL in etcd (whole seconds: etcd's unit)
    interval: float = 1.0     # a renewal is sent this often
    margin: float = 1.5       # fence this long before the earliest etcd-side expiry
    attempt: float = 1.0      # one renewal's timeout (the keeper client's read timeout)
    watchdog: int = 2         # the watchdog's timeout, where there is one

    def check(self) -> LeaseTiming:
        """Refuse timings under which a healthy member would fence, or fence too late."""
        fence_after = self.ttl - self.margin
        problems = []
        if self.ttl < 2:
            problems.append("ttl must be at least 2 s (etcd raises shorter ones to 1.5 x its "
                            "election timeout anyway)")
        if self.margin - HOLD_GRACE < MIN_MARGIN:
            problems.append(f"margin must be at least {MIN_MARGIN + HOLD_GRACE} s "
                            f"({MIN_MARGIN} s, and {HOLD_GRACE} s a quorum-loss proof may "
                            "take from it)")
        if 2 * self.interval + self.attempt > fence_after:
            problems.append(f"two renewals and one attempt ({2 * self.interval + self.attempt}"
                            f" s) must fit before the fence at ttl - margin ({fence_after} s)")
        if self.watchdog + WATCHDOG_SLACK + self.interval + self.attempt > self.ttl:
            problems.append("the watchdog timeout + slack + one renewal interval and attempt "
                            "must fit in the ttl, else it would never be fed")
        if problems:
            raise InvalidConfig("Failed to use the lease timing: " + "; ".join(problems))
        return self


HOLD_RECHECK = 0.1  # while holding, the guard asks hold() again this often
# A quorum-loss proof still being gathered at the deadline (a majority answers "no leader"
# or "dead", not yet for long enough) may delay the fence by this much, taken from the
# margin: the fence then comes at the latest margin - HOLD_GRACE before the earliest expiry.
HOLD_GRACE = 0.5


class FenceGuard:
    """When to fence and whether the watchdog may be fed; fence(reason) -> True when every
    HA domain here is confirmed stopped. States: live, held (past the deadline, but
    `hold()` says the whole cluster lost its etcd quorum: nobody can take the domains over;
    quorum.py), fenced (renewals may resume: the lease was still alive), lost (etcd no
    longer has the lease)."""

    def __init__(self, timing: LeaseTiming, clock: Clock, fence: Callable[[str], bool],
                 granted_sent: float, ttl: int,
                 hold: Callable[[], float | None] | None = None,
                 pending: Callable[[], bool] | None = None) -> None:
        self.timing = timing
        self.clock = clock
        self._fence = fence
        self._hold = hold
        self._pending = pending
        self.last_sent = granted_sent
        self.ttl = ttl
        self.state = "live"
        self.fence_ok = False
        self.fenced_at: float | None = None
        self.held_until = 0.0  # while held: no etcd leader is proven up to this moment
        self.fences = 0
        self._lock = threading.Lock()

    def expiry(self) -> float:
        """The earliest moment etcd may expire the lease."""
        return self.last_sent + self.ttl

    def deadline(self) -> float:
        return self.expiry() - self.timing.margin

    def renewed(self, sent: float, ttl: int) -> None:
        with self._lock:
            if self.state == "lost":
                return
            self.last_sent = max(self.last_sent, sent)
            self.ttl = ttl
            if self.state == "held":
                # etcd answered with a TTL: the lease lives (a new etcd leader gave it a
                # fresh TTL) and is renewed from `sent` on.
                log.warning("lease renewed again while holding; live")
                self.state = "live"
            elif self.state == "fenced" and self.clock.now() < self.deadline():
                # The lease outlived the outage: it is ours again; the HA domains stay
                # stopped until the cluster (its HA controller) decides otherwise.
                log.warning("lease renewed again after fencing; re-armed")
                self.state, self.fence_ok = "live", False

    def lost(self, reason: str) -> None:
        """etcd says the lease is gone: fence now, for good."""
        self._do_fence(f"the lease is gone: {reason}", final=True)

    def poll(self) -> float:
        """Fence if the deadline has come; seconds until the guard must look again."""
        now = self.clock.now()
        if self.state in ("live", "held") and now >= self.deadline():
            if self._may_hold():
                return HOLD_RECHECK
            if self.state == "live" and now < self.deadline() + HOLD_GRACE \
                    and self._still_pending():
                return min(HOLD_RECHECK / 2, self.deadline() + HOLD_GRACE - now)
        if self.state == "live" and now >= self.deadline():
            self._do_fence(f"no renewal answered for {now - self.last_sent:.2f} s "
                           f"(ttl {self.ttl} s, margin {self.timing.margin} s)", final=False)
        return max(0.0, self.deadline() - self.clock.now()) if self.state == "live" else 1.0

    def _may_hold(self) -> bool:
        """Past the deadline: hold (True) while the quorum probe proves that no etcd leader
        exists. When that proof ends (a leader is back, or a majority cannot be asked),
        the last proof counts as a renewal sent at its time: any leader after it is a new
        one, and etcd 3.4's new leader gives every lease a fresh TTL plus an election
        timeout from its election on (docs/cluster.md, "Quorum loss")."""
        if self._hold is None:
            return False
        try:
            proven = self._hold()
        except Exception:
            log.exception("the quorum check failed: fencing")
            proven = None
        with self._lock:
            if proven is not None and self.state in ("live", "held"):
                self.state = "held"
                self.held_until = max(self.held_until, proven)
                return True
            if self.state == "held":
                self.state = "live"
                self.last_sent = max(self.last_sent, self.held_until)
        return False

    def _still_pending(self) -> bool:
        try:
            return bool(self._pending is not None and self._pending())
        except Exception:
            log.exception("the quorum check failed: fencing")
            return False

    def _do_fence(self, reason: str, final: bool) -> None:
        with self._lock:
            if self.state == "lost" or (self.state == "fenced" and not final):
                return
            self.state = "lost" if final else "fenced"
            self.fenced_at = self.clock.now()
            self.fences += 1
            already_ok = self.fence_ok
        if already_ok:
            return
        log.error("fencing: stopping the HA domains (%s)", reason)
        try:
            ok = bool(self._fence(reason))
        except Exception:
            log.exception("fencing failed")
            ok = False
        with self._lock:
            self.fence_ok = ok
        if not ok:
            log.error("fencing did not confirm every HA domain stopped: the watchdog (if "
                      "any) is no longer fed")

    def may_feed(self) -> bool:
        if self.state == "held":
            # Confirmed within the last HOLD_RECHECK: no lease can expire before a new etcd
            # leader's fresh TTL (docs/cluster.md), so a reset now would protect nothing.
            return True
        if self.state != "live":
            return self.fence_ok
        wd = self.timing.watchdog + WATCHDOG_SLACK
        return self.clock.now() + wd <= self.expiry()


class LeaseKeeper:
    """Grants (or resumes) the member lease, renews it and runs the FenceGuard, each in a
    thread. `client` should be the keeper's own EtcdClient with Timeouts(request =
    timing.attempt), so renewals never queue behind other work."""

    def __init__(self, client: EtcdClient, fence: Callable[[str], bool],
                 timing: LeaseTiming | None = None, clock: Clock | None = None,
                 watchdog: Watchdog | None = None,
                 hold: Callable[[], float | None] | None = None,
                 pending: Callable[[], bool] | None = None) -> None:
        self.client = client
        self._hold = hold
        self._pending = pending
        self.timing = (timing or LeaseTiming()).check()
        self.clock = clock or MonotonicClock()
        self.watchdog = watchdog
        self._fence = fence
        self.lease_id = 0
        self.guard: FenceGuard | None = None
        self.renewals = 0
        self.failures = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, lease_id: int = 0) -> int:
        """Grant a lease, or resume `lease_id` (after a daemon restart) if etcd still has
        it (NotFound if not); start renewing. Returns the lease id."""
        sent = self.clock.now()
        if lease_id:
            ttl = self.client.lease_keepalive(lease_id)
            if ttl <= 0:
                raise NotFound(f"Failed to resume the member lease {lease_id:x}: etcd no "
                               "longer has it (it expired while the daemon was away)")
        else:
            lease_id, ttl = self.client.lease_grant(self.timing.ttl)
        self.lease_id = lease_id
        self.guard = FenceGuard(self.timing, self.clock, self._fence, sent, ttl, self._hold,
                                self._pending)
        for target, name in ((self._renew_loop, "lease-renew"), (self._guard_loop, "fence")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return lease_id

    def stop(self, revoke: bool = False) -> None:
        """Stop renewing (and revoke: the member's keys go at once). Without revoke the
        lease runs out after its TTL, as if the member had died."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=self.timing.attempt * 4 + 1)
        if revoke and self.lease_id:
            self.client.lease_revoke(self.lease_id)

    @property
    def state(self) -> str:
        return self.guard.state if self.guard else "none"

    def _renew_loop(self) -> None:
        assert self.guard is not None
        guard, streak = self.guard, 0
        while not self._stop.is_set():
            sent = self.clock.now()
            try:
                ttl = self.client.lease_keepalive(self.lease_id)
            except XeniaError as e:
                self.failures += 1
                streak += 1
                if streak == 1:
                    log.warning("lease renewal failed: %s", e)
                # Soon again, not a full interval later: each answered attempt counts.
                self._stop.wait(min(self.timing.interval, 0.25))
                continue
            if ttl <= 0:
                guard.lost("etcd answered that it no longer has the lease")
                self._wake.set()
                return
            if streak:
                log.warning("lease renewed again after %d failed attempts", streak)
            streak = 0
            self.renewals += 1
            guard.renewed(sent, ttl)
            self._wake.set()
            self._stop.wait(max(0.0, sent + self.timing.interval - self.clock.now()))

    def _guard_loop(self) -> None:
        assert self.guard is not None
        guard = self.guard
        feed_every = self.timing.watchdog / 4
        starved = False
        while not self._stop.is_set():
            wait = guard.poll()
            if self.watchdog is not None:
                if guard.may_feed():
                    self.watchdog.feed()
                    starved = False
                elif not starved:
                    starved = True
                    log.error("watchdog no longer fed: the lease deadline is not safe")
                wait = min(wait, feed_every)
            self._wake.wait(wait)
            self._wake.clear()

"""The fencing rule (cluster/lease.py FenceGuard) with an injected clock, the lease timing
checks, and the watchdog's error paths (a temp file stands in for the device)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xenia.cluster.lease import WATCHDOG_SLACK, FenceGuard, LeaseTiming
from xenia.cluster.watchdog import open_watchdog
from xenia.errors import BackendError, InvalidConfig, NotSupported


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


def make(ok: bool = True, timing: LeaseTiming | None = None
         ) -> tuple[FenceGuard, FakeClock, list[tuple[float, str]]]:
    clock = FakeClock()
    calls: list[tuple[float, str]] = []

    def fence(reason: str) -> bool:
        calls.append((clock.now(), reason))
        return ok

    guard = FenceGuard(timing or LeaseTiming(), clock, fence, granted_sent=clock.t, ttl=5)
    return guard, clock, calls


def test_fences_exactly_at_last_sent_plus_ttl_minus_margin() -> None:
    guard, clock, calls = make()
    guard.renewed(sent=101.0, ttl=5)
    clock.t = 104.49  # 101 + 5 - 1.5 = 104.5
    assert guard.poll() == pytest.approx(0.01)
    assert calls == []
    clock.t = 104.5
    guard.poll()
    assert [t for t, _ in calls] == [104.5] and guard.state == "fenced"
    clock.t = 105.0
    guard.poll()
    assert len(calls) == 1  # once per outage


def test_the_send_time_counts_not_the_answer_time() -> None:
    guard, clock, calls = make()
    clock.t = 103.0
    guard.renewed(sent=100.2, ttl=5)  # sent at 100.2, answered at 103
    assert guard.deadline() == pytest.approx(103.7)
    # An older renewal answered late never moves the deadline back.
    guard.renewed(sent=100.1, ttl=5)
    assert guard.deadline() == pytest.approx(103.7)
    clock.t = 103.7
    guard.poll()
    assert len(calls) == 1


def test_renewal_after_fence_rearms_while_the_lease_lives() -> None:
    guard, clock, calls = make()
    clock.t = 103.5
    guard.poll()
    assert guard.state == "fenced"
    guard.renewed(sent=103.4, ttl=5)  # the network came back before etcd expired it
    assert guard.state == "live" and guard.fence_ok is False
    clock.t = 103.4 + 3.5
    guard.poll()
    assert len(calls) == 2 and guard.fences == 2


def test_lost_lease_fences_at_once_and_for_good() -> None:
    guard, clock, calls = make()
    clock.t = 101.0
    guard.lost("etcd answered TTL 0")
    assert guard.state == "lost" and calls == [(101.0, "the lease is gone: etcd answered TTL 0")]
    guard.renewed(sent=101.5, ttl=5)
    assert guard.state == "lost"
    clock.t = 200.0
    guard.poll()
    assert len(calls) == 1


def test_watchdog_is_fed_only_while_the_deadline_is_safe() -> None:
    guard, clock, _ = make()
    limit = 100.0 + 5 - 2 - WATCHDOG_SLACK  # last_sent + ttl - watchdog - slack
    clock.t = limit
    assert guard.may_feed()
    clock.t = limit + 0.01
    assert not guard.may_feed()  # a reset now would come after the earliest expiry


def test_after_a_clean_fence_the_watchdog_is_fed_again_but_not_after_a_failed_one() -> None:
    guard, clock, _ = make(ok=True)
    clock.t = 103.5
    guard.poll()
    assert guard.may_feed()  # no HA domain left to protect: no reason to reset the host
    bad, clock2, _ = make(ok=False)
    clock2.t = 103.5
    bad.poll()
    assert not bad.may_feed()


def test_fence_callback_that_raises_counts_as_failed() -> None:
    clock = FakeClock()

    def fence(reason: str) -> bool:
        raise OSError("kill failed")

    guard = FenceGuard(LeaseTiming(), clock, fence, granted_sent=100.0, ttl=5)
    clock.t = 104.0
    guard.poll()
    assert guard.state == "fenced" and guard.fence_ok is False and not guard.may_feed()


def test_granted_ttl_above_the_asked_one_is_used() -> None:
    guard, clock, _ = make()
    guard.renewed(sent=100.0, ttl=7)  # etcd raised it (its minimum)
    assert guard.expiry() == 107.0


@pytest.mark.parametrize("timing,words", [
    (LeaseTiming(ttl=1), "at least 2"),
    (LeaseTiming(margin=0.1), "margin"),
    (LeaseTiming(ttl=4, interval=1.5), "two renewals"),
    (LeaseTiming(watchdog=4), "watchdog"),
])
def test_unsafe_timings_are_refused(timing: LeaseTiming, words: str) -> None:
    with pytest.raises(InvalidConfig, match=words):
        timing.check()


def test_default_timing_is_accepted() -> None:
    assert LeaseTiming().check() == LeaseTiming()


def test_no_watchdog_device(tmp_path: Path) -> None:
    assert open_watchdog(2, tmp_path / "watchdog") is None
    with pytest.raises(NotSupported, match="modprobe softdog"):
        open_watchdog(2, tmp_path / "watchdog", required=True)


def test_a_file_that_is_not_a_watchdog_is_refused_and_disarmed(tmp_path: Path) -> None:
    fake = tmp_path / "watchdog"
    fake.write_bytes(b"")
    with pytest.raises(BackendError, match="is it a watchdog device"):
        open_watchdog(2, fake)
    # The magic close was written before giving up (on a real device: disarmed).
    assert fake.read_bytes() == b"V"

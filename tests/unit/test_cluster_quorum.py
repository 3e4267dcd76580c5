"""The quorum-loss hold (cluster/quorum.py QuorumView, QuorumProbe) and the fence guard
that uses it (cluster/lease.py FenceGuard), with explicit times and an injected clock."""

from __future__ import annotations

import pytest

from xenia.cluster.lease import HOLD_RECHECK, FenceGuard, LeaseTiming
from xenia.cluster.quorum import DEAD, LEADER, NO_LEADER, UNKNOWN, QuorumProbe, QuorumView


def view(*voters: str) -> QuorumView:
    v = QuorumView(election=1.0)
    v.set_voters(list(voters or ("a", "b", "c")))
    return v


def rounds(v: QuorumView, answers: dict[str, str], start: float, end: float,
           every: float = 0.25, latency: float = 0.05) -> None:
    t = start
    while t <= end + 1e-9:
        for host, answer in answers.items():
            v.record(host, answer, t, t + latency)
        t += every


def test_majority_without_leader_for_two_election_timeouts_holds() -> None:
    v = view()
    rounds(v, {"a": DEAD, "b": DEAD, "c": UNKNOWN}, 10.0, 11.75)
    ok, why = v.holds(11.8)
    assert not ok and "only 0 of 3" in why  # dead: no look-back; 1.7 s proven, 2 s needed
    rounds(v, {"a": DEAD, "b": DEAD, "c": UNKNOWN}, 12.0, 12.25)
    ok, why = v.holds(12.3)
    assert ok and "2 of 3" in why


def test_a_running_etcd_without_leader_proves_one_election_timeout_back() -> None:
    v = view()
    # "no leader" means its election timer ran out: no leader for 1 s before the answer.
    rounds(v, {"a": NO_LEADER, "b": NO_LEADER}, 10.0, 11.0)
    assert not v.holds(11.05)[0]  # from 10.05 - 1 to 11.0: 0.05 s short
    rounds(v, {"a": NO_LEADER, "b": NO_LEADER}, 11.25, 11.25)
    assert v.holds(11.3)[0]


def test_one_voter_with_a_leader_prevents_the_hold() -> None:
    v = view()
    rounds(v, {"a": NO_LEADER, "b": NO_LEADER, "c": LEADER}, 10.0, 12.0)
    ok, why = v.holds(12.05)
    assert not ok and "c still see(s) an etcd leader" in why


def test_a_minority_never_holds() -> None:
    v = view("a", "b", "c", "d", "e")
    rounds(v, {"a": DEAD, "b": NO_LEADER, "c": UNKNOWN, "d": UNKNOWN}, 10.0, 14.0)
    ok, why = v.holds(14.05)
    assert not ok and "(3 needed; last answers: a: dead; b: no-leader" in why


def test_unknown_or_a_gap_breaks_the_streak() -> None:
    v = view()
    rounds(v, {"a": DEAD, "b": DEAD}, 10.0, 12.25)
    assert v.holds(12.3)[0]
    v.record("b", UNKNOWN, 12.5, 12.55)  # a frozen etcd may be a stale leader
    assert not v.holds(12.55)[0]
    rounds(v, {"a": DEAD, "b": DEAD}, 12.75, 13.25)
    assert not v.holds(13.3)[0]  # b's streak starts again at 12.8
    # a: a silence longer than an election timeout starts a new streak too.
    v2 = view()
    rounds(v2, {"a": DEAD, "b": DEAD}, 10.0, 11.0)
    rounds(v2, {"a": DEAD, "b": DEAD}, 12.5, 13.0)
    assert not v2.holds(13.05)[0]


def test_answers_must_be_fresh() -> None:
    v = view()
    rounds(v, {"a": DEAD, "b": DEAD}, 10.0, 12.5)
    assert v.holds(12.6)[0]
    assert not v.holds(13.6)[0]  # the last answers are more than a timeout old


def test_a_dead_etcd_counts_from_when_its_xeniad_saw_it_die() -> None:
    v = view()
    for h in ("a", "b"):
        v.record(h, DEAD, 10.0, 10.05, back=1.5)
    v.record("a", DEAD, 10.25, 10.3, back=1.75)
    v.record("b", NO_LEADER, 10.25, 10.3)  # restarted meanwhile, isolated: the same streak
    assert not v.holds(10.3)[0]  # from 8.55 to 10.25: 1.7 s
    for h in ("a", "b"):
        v.record(h, NO_LEADER, 10.6, 10.65)
    assert v.holds(10.65)[0]


def test_a_later_answer_can_reach_further_back() -> None:
    v = view()
    v.record("a", DEAD, 10.0, 10.05)  # not yet seen dead by its xeniad: proves from 10.05
    v.record("a", DEAD, 10.25, 10.3, back=2.0)  # seen dead since 8.3
    assert v.streaks["a"].start == pytest.approx(8.3)


def test_no_known_voters_never_holds() -> None:
    v = QuorumView()
    assert v.holds(1.0) == (None, "the etcd voters are not known")


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t


def guard_with(hold: list[float | None]) -> tuple[FenceGuard, Clock, list[str]]:
    clock = Clock()
    fences: list[str] = []

    def fence(reason: str) -> bool:
        fences.append(reason)
        return True

    g = FenceGuard(LeaseTiming(), clock, fence, granted_sent=100.0, ttl=5,
                   hold=lambda: hold[0])
    return g, clock, fences


def test_guard_holds_past_the_deadline_then_fences_when_the_hold_ends() -> None:
    hold: list[float | None] = [103.4]
    g, clock, fences = guard_with(hold)
    clock.t = 103.5  # the deadline
    assert g.poll() == HOLD_RECHECK
    assert g.state == "held" and fences == [] and g.may_feed()
    clock.t = 110.0  # far past the lease's nominal expiry: still held
    hold[0] = 109.9
    g.poll()
    assert g.state == "held" and fences == []
    # The proof ends (a leader is back): the last proof counts as a renewal sent then,
    # since any leader after it is a new one that gave the lease a fresh TTL.
    hold[0] = None
    assert g.poll() == pytest.approx(109.9 + 5 - 1.5 - 110.0)
    assert g.state == "live" and fences == []
    clock.t = 113.4
    g.poll()
    assert g.state == "fenced" and len(fences) == 1


def test_guard_without_a_hold_fences_at_the_deadline() -> None:
    g, clock, fences = guard_with([None])
    clock.t = 103.5
    g.poll()
    assert g.state == "fenced" and len(fences) == 1


def test_a_renewal_while_held_makes_the_lease_live_again() -> None:
    g, clock, fences = guard_with([103.9])
    clock.t = 104.0
    g.poll()
    assert g.state == "held"
    g.renewed(sent=109.0, ttl=5)  # a new etcd leader: the lease lives on
    assert g.state == "live" and g.deadline() == pytest.approx(112.5)
    clock.t = 109.5
    assert g.poll() == pytest.approx(3.0)
    assert fences == []


def test_a_lost_lease_fences_even_while_held() -> None:
    g, clock, fences = guard_with([103.9])
    clock.t = 104.0
    g.poll()
    g.lost("etcd answered that it no longer has the lease")
    assert g.state == "lost" and len(fences) == 1


def test_a_hold_check_that_raises_fences() -> None:
    clock = Clock()
    fences: list[str] = []

    def bad() -> float | None:
        raise RuntimeError("boom")

    g = FenceGuard(LeaseTiming(), clock, lambda r: fences.append(r) is None, 100.0, 5,
                   hold=bad)
    clock.t = 103.5
    g.poll()
    assert g.state == "fenced" and len(fences) == 1


def test_probe_asks_every_voter_and_an_error_is_unknown() -> None:
    t = [0.0]
    asked: list[str] = []

    def ask(host: str) -> tuple[str, float]:
        asked.append(host)
        if host == "c":
            raise OSError("unreachable")
        return DEAD, 0.0

    p = QuorumProbe(lambda: ["a", "b", "c"], ask, lambda: True, clock=lambda: t[0])
    p._refresh_voters()
    try:
        for i in range(9):
            t[0] = i * 0.25
            p.round()
        assert sorted(set(asked)) == ["a", "b", "c"] and p.rounds == 9
        assert p.view.last["c"][0] == UNKNOWN
        assert p.hold() and p.held is not None and "a, b" in p.held["why"]
        t[0] = 5.0
        assert not p.hold() and p.held is None
    finally:
        p.stop()


class _Member:
    def __init__(self, pid: int | None) -> None:
        self._pid = pid

    def pid(self) -> int | None:
        return self._pid


class _Supervisor:
    def __init__(self, down_since: float | None, restarted_pid: int | None = None) -> None:
        self.down_since = down_since
        self.restarted_pid = restarted_pid


class _Runtime:
    def __init__(self, member: _Member | None, sup: _Supervisor | None) -> None:
        self.member = member
        self.supervisor = sup


def test_local_answer_without_an_own_etcd_or_with_a_dead_one() -> None:
    import time

    from xenia.cluster.quorum import local_answer

    assert local_answer(None)["etcd"] == UNKNOWN
    assert local_answer(_Runtime(None, None))["etcd"] == UNKNOWN  # an external etcd
    ans = local_answer(_Runtime(_Member(None), _Supervisor(time.monotonic() - 2.0)))
    assert ans["etcd"] == DEAD and 1.9 < ans["for"] < 3.0
    ans = local_answer(_Runtime(_Member(None), _Supervisor(None)))  # not yet seen dead
    assert ans["etcd"] == DEAD and ans["for"] == 0.0


def test_a_proof_under_way_delays_the_fence_by_the_grace_at_most() -> None:
    from xenia.cluster.lease import HOLD_GRACE

    clock = Clock()
    fences: list[float] = []
    proof: list[float | None] = [None]
    g = FenceGuard(LeaseTiming(), clock, lambda r: fences.append(clock.t) is None, 100.0, 5,
                   hold=lambda: proof[0], pending=lambda: True)
    clock.t = 103.5
    assert 0 < g.poll() <= HOLD_GRACE and fences == [] and g.state == "live"
    clock.t = 103.8
    proof[0] = 103.7  # proven within the grace: held
    g.poll()
    assert g.state == "held" and fences == []
    # Not proven in time: fenced at the end of the grace, 1 s before the earliest expiry.
    g2 = FenceGuard(LeaseTiming(), clock, lambda r: fences.append(clock.t) is None, 100.0, 5,
                    hold=lambda: None, pending=lambda: True)
    clock.t = 103.99
    g2.poll()
    assert fences == []
    clock.t = 103.5 + HOLD_GRACE
    g2.poll()
    assert fences == [104.0] and g2.state == "fenced"


def test_pending_needs_a_fresh_majority_and_no_leader() -> None:
    v = view()
    v.record("a", DEAD, 10.0, 10.05)
    assert not v.pending(10.1)
    v.record("b", NO_LEADER, 10.0, 10.05)
    assert v.pending(10.1) and not v.holds(10.1)[0]
    v.record("c", LEADER, 10.2, 10.25)
    assert not v.pending(10.3)

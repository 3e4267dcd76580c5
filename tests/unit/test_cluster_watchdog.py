"""The watchdog feeder: LeaseKeeper's guard thread feeding a Watchdog whose device is a
pipe (this machine has no /dev/watchdog and no softdog module), and the member agent's
watchdog setting (armed by default where the device exists, off on request).

The lease client is a stand-in whose renewals succeed until told to fail: what is under
test is when the guard thread writes to the device, read back with timestamps."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from xenia.cluster.lease import LeaseKeeper, LeaseTiming
from xenia.cluster.watchdog import Watchdog
from xenia.errors import BackendError, NotSupported

# TTL 3 s, fence 1 s before it; the watchdog (1 s + 0.5 s slack) is fed only while
# now + 1.5 <= last_sent + 3, i.e. for 1.5 s after the last answered renewal.
TIMING = LeaseTiming(ttl=3, interval=0.25, margin=1.0, attempt=0.25, watchdog=1)


class Renewals:
    def __init__(self) -> None:
        self.failing = False
        self.last_ok = 0.0

    def lease_grant(self, ttl: int) -> tuple[int, int]:
        return 7, ttl

    def lease_keepalive(self, lease: int) -> int:
        if self.failing:
            raise BackendError("Failed to renew lease 7: unreachable")
        self.last_ok = time.monotonic()
        return TIMING.ttl

    def lease_revoke(self, lease: int) -> None:
        pass


class Device:
    """A pipe as the watchdog device: every byte written, with when it came."""

    def __init__(self) -> None:
        r, w = os.pipe()
        self.watchdog = Watchdog(Path("/dev/watchdog-fake"), w, TIMING.watchdog)
        self.writes: list[tuple[float, bytes]] = []
        self._r = r
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            data = os.read(self._r, 64)
            if not data:
                return
            now = time.monotonic()
            self.writes += [(now, bytes([b])) for b in data]

    def close(self) -> None:
        self._thread.join(timeout=2)
        os.close(self._r)

    def feeds_between(self, a: float, b: float) -> list[float]:
        return [t for t, b_ in self.writes if a <= t <= b and b_ == b"\0"]


def run_outage(fence_ok: bool) -> tuple[Device, float, list[float]]:
    dev = Device()
    renewals = Renewals()
    fences: list[float] = []

    def fence(reason: str) -> bool:
        fences.append(time.monotonic())
        return fence_ok

    keeper = LeaseKeeper(renewals, fence, TIMING, watchdog=dev.watchdog)  # type: ignore[arg-type]
    keeper.start()
    time.sleep(1.0)  # healthy: renewals every 0.25 s, feeds every 0.25 s
    renewals.failing = True
    deadline = time.monotonic() + 5
    while not fences and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(1.0)
    keeper.stop()
    dev.watchdog.disarm()
    dev.close()
    return dev, renewals.last_ok, fences


def test_fed_while_safe_starved_before_the_fence_fed_again_after_it() -> None:
    dev, last_ok, fences = run_outage(fence_ok=True)
    assert len(fences) == 1
    start = dev.writes[0][0]
    assert len(dev.feeds_between(start, start + 0.9)) >= 3  # healthy: fed
    # The last answered renewal was sent at most at last_ok: no feed between
    # last_ok + 1.5 (+ one feed period of lateness) and the fence.
    assert dev.feeds_between(last_ok + 1.5 + 0.3, fences[0] - 0.01) == []
    # The fence confirmed every HA domain stopped: nothing left to protect, fed again.
    assert dev.feeds_between(fences[0], fences[0] + 1.0)
    assert dev.writes[-1][1] == b"V"  # the clean stop disarms it


def test_a_fence_that_failed_leaves_it_starving() -> None:
    dev, last_ok, fences = run_outage(fence_ok=False)
    assert len(fences) == 1
    assert dev.feeds_between(last_ok + 1.5 + 0.3, fences[0] + 1.0) == []



def agent(tmp_path: Path, mode: str, device: Path) -> Any:
    from xenia.cluster.agent import MemberAgent

    a = MemberAgent.__new__(MemberAgent)
    a.timing = LeaseTiming()
    a.watchdog_mode = mode
    a.watchdog_path = device
    a._watchdog = None
    a._watchdog_tried = False
    return a


def test_default_is_on_where_the_device_exists_and_off_is_off(tmp_path: Path,
                                                               caplog: Any) -> None:
    missing = tmp_path / "watchdog"
    a = agent(tmp_path, "auto", missing)
    a._open_watchdog()  # no device: warned once, not armed, the member runs on
    assert a._watchdog is None and "no watchdog device" in caplog.text
    caplog.clear()
    a._open_watchdog()
    assert caplog.text == ""
    with pytest.raises(NotSupported, match="Failed to arm the watchdog"):
        agent(tmp_path, "on", missing)._open_watchdog()
    # A device that is not a watchdog (a plain file): "auto" logs and runs on, "on" refuses.
    fake = tmp_path / "notadog"
    fake.write_bytes(b"")
    a = agent(tmp_path, "auto", fake)
    a._open_watchdog()
    assert a._watchdog is None and "is it a watchdog device" in caplog.text
    assert fake.read_bytes() == b"V"  # opened, so disarmed before giving up
    with pytest.raises(BackendError):
        agent(tmp_path, "on", fake)._open_watchdog()
    off = agent(tmp_path, "off", fake)
    fake.write_bytes(b"")
    off._open_watchdog()
    assert off._watchdog is None and fake.read_bytes() == b""  # never even opened

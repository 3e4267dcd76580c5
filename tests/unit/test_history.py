"""host/history.py: the ring buffer of the UI's graphs, from stats samples to rates."""

from __future__ import annotations

import asyncio
from typing import Any

from xenia.host import history
from xenia.host.history import History


class Rows:
    """Stats samples as DomainViews.stats() gives them, one list a call."""

    def __init__(self, samples: list[list[dict[str, Any]]]) -> None:
        self.samples = samples

    async def stats(self) -> list[dict[str, Any]]:
        return self.samples.pop(0)


def row(uuid: str, cpu: float, wr: int) -> dict[str, Any]:
    return {"domid": 1, "uuid": uuid, "cpu_time": cpu, "memory_kib": 2048,
            "net_rx_bytes": 0, "net_tx_bytes": 0, "vbd_rd_bytes": 0, "vbd_wr_bytes": wr}


def test_series_are_rates_between_samples_and_break_at_a_restart(monkeypatch: Any) -> None:
    clock = iter([100.0, 102.0, 104.0, 106.0])
    monkeypatch.setattr(history.time, "time", lambda: next(clock))
    h = History(Rows([[row("a", 1.0, 0)], [row("a", 2.0, 4096)], [row("a", 0.5, 0)],
                      [row("a", 1.5, 2048)]]), interval=2.0)
    for _ in range(4):
        asyncio.run(h.sample())
    s = h.series("a")
    # 1 s of CPU in 2 s = 50 %; 4 KiB in 2 s = 2 KiB/s; the restart (CPU went back) is
    # skipped rather than drawn as a negative rate.
    assert s["t"] == [102.0, 106.0]
    assert s["cpu"] == [50.0, 50.0]
    assert s["disk_wr_kibs"] == [2.0, 1.0]
    assert s["memory_mib"] == [2.0, 2.0]
    assert len(h.series(History.HOST)["t"]) == 3  # the host: every pair of samples
    assert h.series("nobody")["t"] == []


def test_the_buffer_holds_one_hour() -> None:
    h = History(Rows([]), interval=5.0)
    assert h.samples.maxlen == 721

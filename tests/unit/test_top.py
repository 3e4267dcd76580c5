"""`xenia top` without a daemon: CPU% from deltas, columns, batch and JSON output, loops."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from xenia.cli import top
from xenia.cli.base import Ctx, cli
from xenia.cli.main import main  # noqa: F401 - fills the registry

HOST_KIB = 8 * 1024 * 1024


def dom(name: str, domid: int, t: float, cpu: float, **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": name, "domid": domid, "type": "pvh", "state_letters": "-b----",
        "cpu_time": cpu, "vcpus": 2, "memory_kib": 1048576, "maxmem_kib": 2097152,
        "host_memory_kib": HOST_KIB, "nets": 1, "net_rx_bytes": 10 * 1024,
        "net_tx_bytes": 3 * 1024 + 1000, "vbds": 1, "vbd_rd_ops": 12, "vbd_wr_ops": 34,
        "vbd_rd_bytes": 512 * 100, "vbd_wr_bytes": 512 * 7 + 3, "timestamp": t,
    }
    d.update(kw)
    return d


def sample(t: float, cpus: dict[str, float]) -> list[dict[str, Any]]:
    out = [dom("Domain-0", 0, t, cpus["Domain-0"], type="host", state_letters="r-----",
               memory_kib=2097152, maxmem_kib=HOST_KIB, nets=0, vbds=0)]
    for i, (name, cpu) in enumerate((k, v) for k, v in cpus.items() if k != "Domain-0"):
        out.append(dom(name, i + 1, t, cpu))
    return out


# -- CPU% ----------------------------------------------------------------------------------
def test_cpu_percent_from_deltas() -> None:
    a = dom("vm", 1, 100.0, 10.0)
    assert top.cpu_percent(a, dom("vm", 1, 103.0, 11.5)) == pytest.approx(50.0)
    assert top.cpu_percent(a, dom("vm", 1, 102.0, 14.0)) == pytest.approx(200.0)  # 2 vCPUs
    assert top.cpu_percent(None, a) == 0.0  # no earlier sample
    assert top.cpu_percent(a, dom("vm", 1, 100.0, 12.0)) == 0.0  # no time passed
    assert top.cpu_percent(a, dom("vm", 1, 104.0, 1.0)) == 0.0  # counter restarted


def test_compute_rows_matches_by_domid() -> None:
    prev = sample(100.0, {"Domain-0": 50.0, "web": 10.0})
    cur = sample(102.0, {"Domain-0": 51.0, "web": 10.5, "new": 3.0})
    rows = top.compute_rows(prev, cur)
    assert [r["name"] for r in rows] == ["Domain-0", "web", "new"]
    assert [round(r["cpu_pct"], 3) for r in rows] == [50.0, 25.0, 0.0]
    assert rows[0]["mem_pct"] == pytest.approx(25.0)
    assert rows[1]["mem_pct"] == pytest.approx(12.5)
    assert top.compute_rows(None, cur)[1]["cpu_pct"] == 0.0
    assert "cpu_pct" not in cur[0]  # the sample itself is left alone


# -- columns -------------------------------------------------------------------------------
HEADER = ("      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) VCPUS NETS "
          "NETTX(k) NETRX(k) VBDS   VBD_RD   VBD_WR  VBD_RSECT  VBD_WSECT TYPE")


def test_format_table() -> None:
    rows = top.compute_rows(sample(100.0, {"Domain-0": 50.0, "web": 10.0}),
                            sample(102.0, {"Domain-0": 51.0, "web": 10.5}))
    lines = top.format_table(rows)
    assert lines[0] == HEADER
    assert lines[1] == ("  Domain-0 r-----         51   50.0    2097152   25.0    8388608     2"
                        "    0        3       10    0       12       34        100          7"
                        " host")
    assert lines[2] == ("       web -b----         10   25.0    1048576   12.5    2097152     2"
                        "    1        3       10    1       12       34        100          7"
                        " pvh")
    # Every column lines up with its header's right edge (TYPE: left edge).
    for line in lines[1:]:
        assert len(line.split()) == len(top.COLUMNS)
        assert line.index(line.split()[-1]) == HEADER.index("TYPE")


def test_long_names_widen_the_column() -> None:
    name = "a-rather-long-domain-name"
    rows = top.compute_rows(None, [dom(name, 7, 1.0, 2.0, type="container")])
    lines = top.format_table(rows)
    assert lines[0].startswith(" " * (len(name) - 4) + "NAME  STATE")
    assert lines[1].startswith(name + " -b----")
    assert lines[1].split()[-1] == "container"


def test_missing_counters_show_as_zero() -> None:
    rows = top.compute_rows(None, [{"name": "bare", "domid": 3, "cpu_time": 1.0}])
    line = top.format_table(rows)[1]
    assert line.split() == ["bare", "------", "1", "0.0", "0", "0.0", "0", "0", "0", "0",
                            "0", "0", "0", "0", "0", "0"]


def test_summary() -> None:
    cur = sample(1.0, {"Domain-0": 1.0, "a": 1.0, "b": 1.0})
    cur[2]["state_letters"] = "--p---"
    lines = top.summary(top.compute_rows(None, cur), now=0.0)
    assert lines[0].startswith("xenia top - ")
    assert lines[1] == ("3 domains: 1 running, 1 blocked, 1 paused, 0 crashed, 0 dying, "
                        "0 shutdown")
    assert lines[2] == f"Mem: {HOST_KIB}k total, 2097152k in guests"


# -- loops ---------------------------------------------------------------------------------
class FakeDaemon:
    """GET /v1/stats answers: web uses 0.25 s of CPU a second, the clock moves by sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.calls = 0
        self.sleeps: list[float] = []

    def fetch(self) -> list[dict[str, Any]]:
        self.calls += 1
        return sample(self.now, {"Domain-0": self.now * 0.1, "web": self.now * 0.25})

    def sleep(self, secs: float) -> None:
        self.sleeps.append(secs)
        self.now += secs


def test_batch_iterations_and_delays() -> None:
    d = FakeDaemon()
    lines: list[str] = []
    top.run_batch(d.fetch, lines.append, delay=3.0, iterations=3, sleep=d.sleep)
    assert d.sleeps == [top.PRIME_DELAY, 3.0, 3.0]
    assert d.calls == 4
    assert [i for i, line in enumerate(lines) if line == HEADER] == [0, 3, 6]
    assert len(lines) == 9
    for i in (2, 5, 8):  # the first iteration already has a real CPU% (primed)
        assert lines[i].split()[3] == "25.0"
        assert lines[i - 1].split()[3] == "10.0"


def test_batch_short_delay_primes_shorter() -> None:
    d = FakeDaemon()
    top.run_batch(d.fetch, lambda _: None, delay=0.2, iterations=2, sleep=d.sleep)
    assert d.sleeps == [0.2, 0.2]


def test_json_lines() -> None:
    d = FakeDaemon()
    lines: list[str] = []
    top.run_batch(d.fetch, lines.append, delay=1.0, iterations=2, as_json=True,
                  sleep=d.sleep)
    assert len(lines) == 2
    docs = [json.loads(line) for line in lines]
    assert docs[0]["timestamp"] == 1000.5 and docs[1]["timestamp"] == 1001.5
    web = docs[1]["domains"][1]
    assert web["name"] == "web" and web["cpu_pct"] == 25.0 and web["mem_pct"] == 12.5
    assert web["net_tx_bytes"] == 3 * 1024 + 1000  # raw counters pass through
    assert [x["domid"] for x in docs[0]["domains"]] == [0, 1]


def test_samples_forever_until_stopped() -> None:
    d = FakeDaemon()
    gen = top.samples(d.fetch, 2.0, None, d.sleep)
    for _ in range(10):
        next(gen)
    assert d.calls == 11


# -- interactive ---------------------------------------------------------------------------
def test_render() -> None:
    rows = top.compute_rows(None, sample(1.0, {"Domain-0": 1.0, "web": 2.0}))
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(top.render(rows, now=0.0))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "xenia top - " in text
    assert "VBD_WSECT" in text and "TYPE" in text
    assert "Domain-0" in text and "web" in text and "pvh" in text
    assert "q: quit" in text


@pytest.fixture
def keys() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    try:
        yield r, w
    finally:
        os.close(r)
        os.close(w)


def test_wait_key(keys: tuple[int, int]) -> None:
    r, w = keys
    assert top.wait_key(r, 0.01) is False  # nothing typed: timeout
    os.write(w, b"x")
    assert top.wait_key(r, 5.0) is False  # another key: refresh now
    os.write(w, b"q")
    assert top.wait_key(r, 5.0) is True
    os.write(w, b"Q")
    assert top.wait_key(r, 5.0) is True


def test_interactive_quits_on_q(keys: tuple[int, int]) -> None:
    r, w = keys
    d = FakeDaemon()
    os.write(w, b"q")
    console = Console(file=io.StringIO(), width=200, color_system=None)
    top.run_interactive(d.fetch, delay=10.0, iterations=None, console=console, key_fd=r,
                        prime=0.0)
    assert d.calls == 2  # the primed first screen, then q
    assert "web" in console.file.getvalue()  # type: ignore[attr-defined]


def test_interactive_iterations(keys: tuple[int, int]) -> None:
    r, w = keys
    d = FakeDaemon()
    os.write(w, b"  ")  # two keys: two refreshes without waiting the delay
    console = Console(file=io.StringIO(), width=200, color_system=None)
    top.run_interactive(d.fetch, delay=10.0, iterations=2, console=console, key_fd=r,
                        prime=0.0)
    assert d.calls == 3


# -- the command ---------------------------------------------------------------------------
class FakeClient:
    def __init__(self) -> None:
        self.daemon = FakeDaemon()
        self.urls: list[str] = []

    def get(self, url: str) -> Any:
        self.urls.append(url)
        return self.daemon.fetch()


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    fake = FakeClient()
    monkeypatch.setattr(Ctx, "client", property(lambda self: fake))
    monkeypatch.setattr(top.time, "sleep", fake.daemon.sleep)
    return fake


def test_command_batch(client: FakeClient) -> None:
    res = CliRunner().invoke(cli, ["top", "-b", "-i", "2", "-d", "1"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines.count(HEADER) == 2 and len(lines) == 6
    assert client.urls == ["/v1/stats"] * 3
    assert client.daemon.sleeps == [0.5, 1.0]


def test_command_json(client: FakeClient) -> None:
    res = CliRunner().invoke(cli, ["top", "--json", "-i", "3"])
    assert res.exit_code == 0, res.output
    docs = [json.loads(line) for line in res.output.splitlines()]
    assert len(docs) == 3
    assert client.daemon.sleeps == [0.5, 3.0, 3.0]  # default delay: 3 s, as xentop


def test_command_without_terminal_prints_tables(client: FakeClient) -> None:
    res = CliRunner().invoke(cli, ["top", "-i", "1"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == HEADER


@pytest.mark.parametrize("args", [["-d", "0"], ["-i", "0"], ["-d", "x"]])
def test_command_bad_options(client: FakeClient, args: list[str]) -> None:
    res = CliRunner().invoke(cli, ["top", "-b", *args])
    assert res.exit_code == 2
    assert client.urls == []

"""`xenia top`: xentop for Xenia's domains (interactive, batch `-b`, or `--json`).

One sample is GET /v1/stats: a list with one object per domain, Domain-0 first, carrying
cumulative counters (CPU seconds, bytes, I/O operations) and a `timestamp`. CPU(%) is the
change in CPU seconds between two samples over the time between them, so the first screen
is drawn from a second sample taken PRIME_DELAY s after the first, as xentop does.

The columns are xentop's (minus MAXMEM(%), VBD_OO and SSID, which have no KVM meaning) in
xentop's order, so scripts that split its batch output keep working; TYPE comes last for
the same reason. Everything but the terminal handling is plain functions over samples:
compute_rows, format_table, json_line, run_batch.
"""

from __future__ import annotations

import json
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from xenia.cli.base import Ctx, cli, out, pass_ctx

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

Sample = list[dict[str, Any]]
PRIME_DELAY = 0.5

# (header, width); every column but TYPE is right-aligned, as in xentop.
COLUMNS: tuple[tuple[str, int], ...] = (
    ("NAME", 10), ("STATE", 6), ("CPU(sec)", 10), ("CPU(%)", 6), ("MEM(k)", 10),
    ("MEM(%)", 6), ("MAXMEM(k)", 10), ("VCPUS", 5), ("NETS", 4), ("NETTX(k)", 8),
    ("NETRX(k)", 8), ("VBDS", 4), ("VBD_RD", 8), ("VBD_WR", 8), ("VBD_RSECT", 10),
    ("VBD_WSECT", 10), ("TYPE", 9),
)


# -- sample -> rows ----------------------------------------------------------------------
def cpu_percent(prev: dict[str, Any] | None, cur: dict[str, Any]) -> float:
    """CPU(%) of one domain between two samples: 100 = one host CPU busy all the time.

    0.0 without an earlier sample, and when the clock or the counter went backwards (a
    domain id given to a new domain, a daemon restart).
    """
    if prev is None:
        return 0.0
    elapsed = float(cur.get("timestamp", 0.0)) - float(prev.get("timestamp", 0.0))
    used = float(cur.get("cpu_time", 0.0)) - float(prev.get("cpu_time", 0.0))
    if elapsed <= 0 or used < 0:
        return 0.0
    return used / elapsed * 100.0


def compute_rows(prev: Sample | None, cur: Sample) -> list[dict[str, Any]]:
    """`cur`'s domain objects, each with `cpu_pct` (against `prev`, matched by domid) and
    `mem_pct` (of the host's memory) added. Order is kept: Domain-0 first."""
    before = {d.get("domid"): d for d in prev or []}
    rows = []
    for d in cur:
        host = int(d.get("host_memory_kib") or 0)
        rows.append({**d,
                     "cpu_pct": cpu_percent(before.get(d.get("domid")), d),
                     "mem_pct": int(d.get("memory_kib", 0)) * 100.0 / host if host else 0.0})
    return rows


def _cells(r: dict[str, Any]) -> list[str]:
    def n(key: str) -> int:
        return int(r.get(key) or 0)

    return [
        str(r.get("name", "?")), str(r.get("state_letters", "------")),
        str(int(float(r.get("cpu_time") or 0))), f"{r['cpu_pct']:.1f}",
        str(n("memory_kib")), f"{r['mem_pct']:.1f}", str(n("maxmem_kib")),
        str(n("vcpus")), str(n("nets")),
        str(n("net_tx_bytes") // 1024), str(n("net_rx_bytes") // 1024),
        str(n("vbds")), str(n("vbd_rd_ops")), str(n("vbd_wr_ops")),
        str(n("vbd_rd_bytes") // 512), str(n("vbd_wr_bytes") // 512),
        str(r.get("type", "")),
    ]


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    """The lines of one batch iteration: header, then a line a domain (rows from
    compute_rows). NAME widens for long names instead of cutting them, so every line
    still splits on blanks."""
    cells = [_cells(r) for r in rows]
    widths = [w for _, w in COLUMNS]
    widths[0] = max([widths[0], *(len(c[0]) for c in cells)])

    def line(values: list[str]) -> str:
        parts = [f"{v:>{w}}" for v, w in zip(values[:-1], widths[:-1], strict=True)]
        return " ".join([*parts, f"{values[-1]:<{widths[-1]}}"]).rstrip()

    return [line([h for h, _ in COLUMNS]), *(line(c) for c in cells)]


def json_line(rows: list[dict[str, Any]]) -> str:
    """One iteration as one line of JSON: {"timestamp", "domains": [...]}, each domain the
    daemon's object with cpu_pct and mem_pct added (raw bytes, not KiB, for scripts)."""
    stamp = max((float(r.get("timestamp") or 0.0) for r in rows), default=time.time())
    doms = [{**r, "cpu_pct": round(r["cpu_pct"], 2), "mem_pct": round(r["mem_pct"], 2)}
            for r in rows]
    return json.dumps({"timestamp": stamp, "domains": doms})


def summary(rows: list[dict[str, Any]], now: float | None = None) -> list[str]:
    """xentop's header lines: the time, domains by state, memory."""
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    counts = {k: 0 for k in "rbpscd"}
    for r in rows:
        for letter in str(r.get("state_letters", "")):
            if letter in counts:
                counts[letter] += 1
    host = max((int(r.get("host_memory_kib") or 0) for r in rows), default=0)
    guests = sum(int(r.get("memory_kib") or 0) for r in rows if r.get("domid") != 0)
    return [
        f"xenia top - {clock}",
        f"{len(rows)} domains: {counts['r']} running, {counts['b']} blocked, "
        f"{counts['p']} paused, {counts['c']} crashed, {counts['d']} dying, "
        f"{counts['s']} shutdown",
        f"Mem: {host}k total, {guests}k in guests",
    ]


# -- loops -------------------------------------------------------------------------------
def samples(fetch: Callable[[], Sample], delay: float, iterations: int | None,
            sleep: Callable[[float], None] | None = None, prime: float = PRIME_DELAY
            ) -> Iterator[list[dict[str, Any]]]:
    """Rows for each of `iterations` iterations (None: forever), `delay` s apart; the
    first from two samples `prime` s apart (or `delay`, if shorter)."""
    sleep = sleep or time.sleep
    prev = fetch()
    sleep(min(prime, delay))
    cur = fetch()
    done = 0
    while True:
        yield compute_rows(prev, cur)
        done += 1
        if iterations is not None and done >= iterations:
            return
        sleep(delay)
        prev, cur = cur, fetch()


def run_batch(fetch: Callable[[], Sample], write: Callable[[str], None], *, delay: float,
              iterations: int | None, as_json: bool = False,
              sleep: Callable[[float], None] | None = None, prime: float = PRIME_DELAY
              ) -> None:
    """Batch mode: a plain table (or one JSON line) per iteration, written with `write`."""
    for rows in samples(fetch, delay, iterations, sleep, prime):
        if as_json:
            write(json_line(rows))
        else:
            for text in format_table(rows):
                write(text)


# -- interactive -------------------------------------------------------------------------
def render(rows: list[dict[str, Any]], now: float | None = None) -> RenderableType:
    """One interactive screen: the summary lines and the table, as a rich renderable."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="reverse", pad_edge=False, padding=(0, 1))
    for i, (header, _) in enumerate(COLUMNS):
        last = i == len(COLUMNS) - 1
        table.add_column(header, justify="left" if last else "right", no_wrap=True)
    for r in rows:
        table.add_row(*_cells(r))
    lines = summary(rows, now)
    return Group(*(Text(t) for t in lines), Text(""), table,
                 Text("q: quit   any other key: refresh now", style="dim"))


def wait_key(fd: int | None, timeout: float) -> bool:
    """Wait up to `timeout` s for a key on `fd`; True if it asks to quit ('q' or 'Q').
    Another key ends the wait early, for a refresh. Without a terminal: just sleeps."""
    if fd is None:
        time.sleep(timeout)
        return False
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return False
    data = os.read(fd, 32)
    return data == b"" or b"q" in data.lower()  # b"": stdin closed, nothing more to wait on


@contextmanager
def _cbreak(fd: int | None) -> Iterator[None]:
    """Keys arrive one at a time without echo; Ctrl-C still interrupts."""
    if fd is None or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_interactive(fetch: Callable[[], Sample], *, delay: float, iterations: int | None,
                    console: Console | None = None, key_fd: int | None = None,
                    prime: float = PRIME_DELAY) -> None:
    """Redraw the screen every `delay` s until 'q' (or `iterations` screens)."""
    from rich.console import Console
    from rich.live import Live

    console = console or Console()
    with _cbreak(key_fd), Live(console=console, screen=console.is_terminal,
                               auto_refresh=False, transient=False) as live:
        prev = fetch()
        time.sleep(min(prime, delay))
        cur = fetch()
        done = 0
        while True:
            live.update(render(compute_rows(prev, cur)), refresh=True)
            done += 1
            if iterations is not None and done >= iterations:
                return
            if wait_key(key_fd, delay):
                return
            prev, cur = cur, fetch()


# -- the command -------------------------------------------------------------------------
@cli.command()
@click.option("-b", "--batch", is_flag=True, help="Batch mode: print plain text tables.")
@click.option("-d", "--delay", type=click.FloatRange(min=0.1), default=3.0, show_default=True,
              metavar="SECS", help="Seconds between updates.")
@click.option("-i", "--iterations", type=click.IntRange(min=1), default=None, metavar="N",
              help="Stop after N updates (default: run until q or Ctrl-C).")
@click.option("--json", "as_json", is_flag=True,
              help="Batch mode printing one JSON document a line per update, for scripts.")
@pass_ctx
def top(c: Ctx, batch: bool, delay: float, iterations: int | None, as_json: bool) -> None:
    """Show domains' CPU, memory, network and disk use, like xentop."""
    def fetch() -> Sample:
        rows: Sample = c.client.get("/v1/stats")
        return rows

    # Not on a terminal (`xenia top > file`): screens would be noise, tables are not.
    if batch or as_json or not sys.stdout.isatty():
        try:
            run_batch(fetch, out, delay=delay, iterations=iterations, as_json=as_json)
        except BrokenPipeError:
            # `xenia top -b | head`: the reader is gone; stop quietly, and keep Python's
            # exit-time flush of stdout from complaining too.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    key_fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    run_interactive(fetch, delay=delay, iterations=iterations, key_fd=key_fd)

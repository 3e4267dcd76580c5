"""xl's verbs on the CLI side and their refusals: abbreviations, console -e, destroy -f,
the log ring of `dmesg`, and triggers QEMU has no way to send."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from xenia.cli import console as con
from xenia.cli.base import LazyGroup, cli
from xenia.cli.client import DryRun
from xenia.cli.main import main  # noqa: F401 - fills the registry
from xenia.config.build import build_config
from xenia.config.xlcfg import parse_config
from xenia.drivers.qemu_xlverbs import XlVerbsMixin
from xenia.errors import InvalidConfig, NotSupported
from xenia.host.actions import PENDING_CONFIG
from xenia.host.xlverbs import XlVerbs
from xenia.hostos import hostinfo
from xenia.logring import RingHandler
from xenia.store.base import DomainRecord


def test_abbreviations_as_xl() -> None:
    resolve = LazyGroup.resolve_abbreviation
    assert resolve("li") == "list"
    assert resolve("network") == "network"  # exact wins over network-attach
    assert resolve("v") == "vcpu-list"
    assert resolve("qemu-m") == "qemu-monitor-command"
    with pytest.raises(click.UsageError, match="ambiguous"):
        resolve("pci")
    assert resolve("nosuch") == "nosuch"
    res = CliRunner().invoke(cli, ["dm", "--help"])
    assert res.exit_code == 0 and "xeniad's recent log" in res.output


def test_console_escape_character() -> None:
    assert con.escape_char("^]") == b"\x1d"
    assert con.escape_char("^a") == b"\x01"
    assert con.escape_char("q") == b"q"
    with pytest.raises(InvalidConfig):
        con.escape_char("^^^")


def test_destroy_domain_0_is_refused_even_with_f() -> None:
    res = CliRunner().invoke(cli, ["--no-autostart", "destroy", "-f", "Domain-0"])
    assert isinstance(res.exception, InvalidConfig)
    assert "it is the host itself" in str(res.exception)


def test_log_ring_keeps_the_last_lines_and_clears() -> None:
    ring = RingHandler(max_lines=3)
    logger = logging.getLogger("xenia.test.ring")
    logger.addHandler(ring)
    logger.setLevel(logging.INFO)
    try:
        for i in range(5):
            logger.info("line %d", i)
    finally:
        logger.removeHandler(ring)
    assert ring.lines(clear=True) == ["line 2", "line 3", "line 4"]
    assert ring.lines() == []


class _Rec:
    name = "d1"


class _NoQmp:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"QMP {name} must not be called")


def test_triggers_qemu_cannot_send_are_refused() -> None:
    verbs = XlVerbsMixin()
    verbs.qmp = _NoQmp()  # type: ignore[assignment]
    verbs.record = _Rec()  # type: ignore[assignment]
    with pytest.raises(NotSupported, match="no ACPI sleep button"):
        asyncio.run(verbs.trigger("sleep"))
    with pytest.raises(NotSupported, match="cannot send an INIT"):
        asyncio.run(verbs.trigger("init"))
    with pytest.raises(InvalidConfig, match="unknown trigger"):
        asyncio.run(verbs.trigger("bogus"))
    with pytest.raises(InvalidConfig, match="one letter or digit"):
        asyncio.run(verbs.sysrq("ab"))


def test_topology_counts_sockets_cores_threads(tmp_path: Path) -> None:
    # Two sockets, two cores each, two threads a core: 8 CPUs; two NUMA nodes.
    cpu = 0
    for pkg in range(2):
        for core in range(2):
            for _ in range(2):
                topo = tmp_path / "cpu" / f"cpu{cpu}" / "topology"
                topo.mkdir(parents=True)
                (topo / "physical_package_id").write_text(f"{pkg}\n")
                (topo / "core_id").write_text(f"{core}\n")
                cpu += 1
    (tmp_path / "node" / "node0").mkdir(parents=True)
    (tmp_path / "node" / "node1").mkdir()
    topo = hostinfo.topology(tmp_path)
    assert (topo["nr_nodes"], topo["cores_per_socket"], topo["threads_per_core"]) == (2, 2, 2)


def test_dry_run_sends_no_change() -> None:
    res = CliRunner().invoke(cli, ["-N", "--no-autostart", "pause", "web1"])
    assert isinstance(res.exception, DryRun)
    assert "dry run: would POST /v1/domains/web1/pause" in res.output


class _Store:
    def __init__(self, rec: DomainRecord) -> None:
        self.rec = rec
        self.puts = 0

    def get(self, uuid: str) -> DomainRecord:
        return self.rec

    def put(self, rec: DomainRecord) -> None:
        self.puts += 1


class _Manager:
    """Just the DomainManager surface config_update uses (its error paths)."""

    def __init__(self, rec: DomainRecord) -> None:
        self.store = _Store(rec)
        self._lock = asyncio.Lock()

    def resolve(self, ref: str) -> DomainRecord:
        return self.store.rec

    def locked(self, uuid: str) -> asyncio.Lock:
        return self._lock


def _record() -> DomainRecord:
    cfg = build_config(parse_config('name="web"\nmemory=256\ndisk=["/d,raw,xvda,rw"]'), "c")
    return DomainRecord(uuid="u1", name="web", domid=3, config=cfg)


def test_config_update_keeps_devices_name_and_type() -> None:
    rec = _record()
    verbs = XlVerbs(_Manager(rec))  # type: ignore[arg-type]

    def update(text: str) -> None:
        asyncio.run(verbs.config_update("web", build_config(parse_config(text), "n")))

    with pytest.raises(NotSupported, match="block-/network-/pci-attach"):
        update('name="web"\nmemory=512')  # the disk is gone
    with pytest.raises(InvalidConfig, match="name and type stay"):
        update('name="other"\nmemory=512\ndisk=["/d,raw,xvda,rw"]')
    assert PENDING_CONFIG not in rec.runtime
    update('name="web"\nmemory=512\ndisk=["/d,raw,xvda,rw"]')
    assert rec.runtime[PENDING_CONFIG]["memory"] == 512
    assert rec.runtime[PENDING_CONFIG]["uuid"] == "u1" and rec.config.memory == 256

"""The web UI's cluster page and migration between hosts, in a real headless Chromium.

Two xeniads, each in a network namespace of its own (tests/integration/multihost.py),
made into a cluster with `xenia cluster init/join`; the browser runs inside h0's
namespace (h0 listens on an address that exists only there). One small guest, g1, is
migrated h0 -> h1 from its domain page, then evacuated back to h0 from the cluster page.
The single-host case of the cluster page is in test_ui.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.browser import Browser, chromium, screenshots_on_failure
from tests.integration.harness import READY, Image, wait_until
from tests.integration.multihost import PORT, Cluster, NetHost, clear_stale_netns, tag

pytestmark = pytest.mark.integration

TAG = str(int(tag()) + 14)  # not test_migration's (+0) nor test_cluster's (+7)
MEM = 96  # MiB: small, so the migrations are quick under TCG


@dataclass(kw_only=True)
class Ui(Browser):
    c: Cluster


def status(h: NetHost) -> dict[str, Any]:
    return dict(json.loads(h.xenia("cluster", "status", "--json").stdout))


def local_names(h: NetHost) -> list[str]:
    return [d["name"] for d in json.loads(h.xenia("list", "--local", "-l").stdout)
            if d.get("domid") != 0]


@pytest.fixture(scope="module")
def ui(request: pytest.FixtureRequest, tiny_image: Image) -> Iterator[Ui]:
    c = Cluster(tiny_image, 2, TAG)
    failed_before = request.session.testsfailed
    try:
        c.start()
        h0, h1 = c.hosts
        h0.xenia("cluster", "init", "--name", "h0", "--cluster", "ui")
        token = h0.xenia("cluster", "token").stdout.strip()
        h1.xenia("cluster", "join", f"{h0.address}:{PORT}", "--token", token, "--name", "h1")
        tokens = {name: h0.xenia("host", "token", "create", "--name", name, "--scope",
                                 scopes).stdout.strip()
                  for name, scopes in (("full", "read,power,console,create,admin"),
                                       ("op", "read,power,create"))}
        h0.xenia("create", str(h0.write_cfg("g1", memory=MEM)), "--host", "h0")
        with chromium(netns=h0.ns) as b:
            h0.wait_console("g1", READY)
            yield Ui(b.browser, f"https://{h0.address}:{PORT}", tokens, c=c)
    finally:
        for h in c.hosts:
            for name in local_names(h) if h.daemon is not None else []:
                h.xenia("destroy", name, check=False, timeout=60)
            if request.session.testsfailed > failed_before:
                print(f"\n##### host {h.ns}")
                h.dump_logs()
        # Before the namespaces go: the etcd members xeniad started outlive it.
        for h in c.hosts:
            clear_stale_netns(h.ns)
        c.stop()


@pytest.fixture(autouse=True)
def screenshots(request: pytest.FixtureRequest, ui: Ui) -> Iterator[None]:
    yield from screenshots_on_failure(request, ui)


def record_progress(page: Any) -> list[tuple[str, str | None]]:
    """Every (status, percent) the page's progress box takes, in order."""
    seen: list[tuple[str, str | None]] = []
    page.expose_function("xeniaProgress", lambda s, p: seen.append((s, p)))
    page.evaluate("""() => { const box = document.getElementById('progress');
        new MutationObserver(() => window.xeniaProgress(box.dataset.status || '',
            box.dataset.pct === undefined ? null : box.dataset.pct))
        .observe(box, {attributes: true}); }""")
    return seen


def host_row(page: Any, host: str) -> Any:
    return page.locator(f"#hosts tbody tr[data-host={host}]")


def test_cluster_page_shows_the_members(ui: Ui) -> None:
    page = ui.page()
    page.goto(ui.base + "/ui/host")
    page.wait_for_selector("#hosts tbody tr[data-host=h1]")
    assert "Cluster 'ui': quorum ok" in page.inner_text("#cluster-note")
    for host, domains in (("h0", "1"), ("h1", "0")):
        row = host_row(page, host)
        assert row.locator("td.state").inner_text() == "up"
        assert row.locator("td.maintenance").inner_text() == "off"
        assert int(row.locator("td.lease").inner_text()) > 0  # a live etcd lease
        assert row.locator("td.domains").inner_text() == domains
    # The domain list across the cluster, with the host column.
    page.goto(ui.base + "/ui/")
    assert page.locator("#domains tbody tr[data-name=g1] td.host").inner_text() == "h0"
    # A token without `admin` gets no host actions.
    page = ui.page("op")
    page.goto(ui.base + "/ui/host")
    page.wait_for_selector("#hosts tbody tr[data-host=h1]")
    assert page.locator("#hosts button").count() == 0


def test_migrate_from_the_domain_page(ui: Ui) -> None:
    h0, h1 = ui.c.hosts
    page = ui.page()
    page.goto(ui.base + "/ui/domain?name=g1")
    page.wait_for_selector("#migrate-host option[value=h1]", state="attached")
    seen = record_progress(page)
    page.select_option("#migrate-host", "h1")
    page.click("button[data-act=migrate]")
    page.wait_for_selector("#progress[data-status=completed]", timeout=120_000)
    # The box showed the job's steps as it went, then the result.
    statuses = [s for s, _ in seen]
    assert statuses[-1] == "completed" and seen[-1][1] == "100.0"
    assert {"starting", "migrating"} <= set(statuses), seen
    pcts = [float(p) for _, p in seen if p is not None]
    assert pcts == sorted(pcts), seen  # it only moves forward
    assert any(0 < p < 100 for p in pcts), seen  # and was seen between the ends
    assert "Migrate: done" in page.inner_text("#msg")
    # g1 runs on h1 now, and answers there.
    assert local_names(h1) == ["g1"] and local_names(h0) == []
    assert "on-h1-42" in h1.run("g1", "echo on-h1-$((40+2))")

    def listed_on_h1() -> bool:
        page.goto(ui.base + "/ui/")
        page.wait_for_selector("#domains tbody tr[data-name=g1]")
        return bool(page.inner_text("#domains tbody tr[data-name=g1] td.host") == "h1")

    wait_until(listed_on_h1, timeout=20, interval=0.5, what="g1 on h1 in the UI's list")


def test_evacuate_and_maintenance_from_the_cluster_page(ui: Ui) -> None:
    h0, h1 = ui.c.hosts
    page = ui.page()
    page.on("dialog", lambda d: d.accept())  # the "are you sure" of an evacuation
    page.goto(ui.base + "/ui/host")
    page.wait_for_selector("#hosts tbody tr[data-host=h1] td.domains a:text('1')")
    seen = record_progress(page)
    host_row(page, "h1").locator("button[data-act=evacuate]").click()
    page.wait_for_selector("#progress[data-status=completed]", timeout=120_000)
    assert seen[0] == ("evacuating", "0.0") and seen[-1] == ("completed", "100.0"), seen
    assert "g1 to h0" in page.inner_text("#progress .text")
    assert local_names(h0) == ["g1"] and local_names(h1) == []
    assert "on-h0" in h0.run("g1", "echo on-h0")
    # Evacuation leaves h1 in maintenance; the button ends it.
    row = host_row(page, "h1")
    page.wait_for_selector("#hosts tbody tr[data-host=h1] td.maintenance:text('on')")
    assert next(h for h in status(h0)["hosts"] if h["name"] == "h1")["maintenance"]
    row.locator("button[data-act=maintenance]").click()
    page.wait_for_selector("#hosts tbody tr[data-host=h1] td.maintenance:text('off')")
    assert not any(h["maintenance"] for h in status(h0)["hosts"])


def test_no_page_requested_another_origin(ui: Ui) -> None:
    assert len(ui.requests) > 10
    assert ui.foreign_requests() == []

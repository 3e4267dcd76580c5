"""The web UI in a real headless Chromium (Debian's, driven by playwright) against a real
xeniad serving TLS on 127.0.0.1, and /metrics against a real guest doing I/O.

One PV guest, created from the UI's create page, is shared by every test; one HVM guest
(firmware only, a blank disk: its screen is SeaBIOS's) for the VNC screen. Every request any
page makes is recorded; the last test checks that none went to another origin. A failed
test keeps a screenshot of its page in $XENIA_UI_SHOTS (tests/integration/browser.py).
The cluster page and migration between hosts: test_ui_cluster.py.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.browser import Browser, chromium, screenshots_on_failure
from tests.integration.conftest import CACHE
from tests.integration.harness import (
    READY,
    Host,
    Image,
    volume,
    wait_until,
    write_xl_cfg,
)

pytestmark = pytest.mark.integration

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(kw_only=True)
class Ui(Browser):
    h: Host
    disk: Path
    saves: Path  # a directory the TCP listener allows

    def metrics(self) -> str:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        r = httpx.get(self.base + "/metrics", verify=ctx,
                      headers={"Authorization": f"Bearer {self.tokens['prom']}"})
        r.raise_for_status()
        return r.text


@pytest.fixture(scope="module")
def ui(request: pytest.FixtureRequest, tiny_image: Image) -> Iterator[Ui]:
    h = Host(tiny_image)
    h.env["XENIA_HISTORY_INTERVAL"] = "1"  # graphs get points within seconds
    port = free_port()
    saves = h.root / "saves"  # allowed over TCP: the save test writes there
    saves.mkdir()
    try:
        with chromium() as b:
            h.start_daemon(20.0, "--listen", f"127.0.0.1:{port}",
                           "--allow-path", str(tiny_image.kernel.parent),
                           "--allow-path", str(saves))
            tokens = {name: h.xenia("host", "token", "create", "--name", name, "--scope",
                                    scopes).stdout.strip()
                      for name, scopes in (("full", "read,power,console,create"),
                                           ("ro", "read"), ("prom", "metrics"),
                                           ("admin", "read,admin"))}
            disk = volume(h, "data", "16M", fmt="raw")
            yield Ui(b.browser, f"https://127.0.0.1:{port}", tokens, h=h, disk=disk,
                     saves=saves)
    finally:
        if request.session.testsfailed:
            h.dump_logs()
        h.cleanup()


@pytest.fixture(autouse=True)
def screenshots(request: pytest.FixtureRequest, ui: Ui) -> Iterator[None]:
    yield from screenshots_on_failure(request, ui)


def test_login_create_from_xlcfg_and_see_it_running(ui: Ui) -> None:
    page = ui.page()
    cfg = write_xl_cfg(ui.h.cfgdir / "web-1.cfg", {
        "name": "web-1", "type": "pv", "kernel": str(ui.h.image.kernel),
        "ramdisk": str(ui.h.image.initrd), "extra": "console=ttyS0", "memory": 256,
        "vcpus": 1, "vif": [], "disk": [f"format=raw,vdev=xvda,target={ui.disk}"],
        "on_poweroff": "preserve", "frobnicate": 1})
    page.goto(ui.base + "/ui/create")
    page.fill("#cfg-text", cfg.read_text())
    page.click("#check")
    # The server's dry run: what it read, and the warning about the unknown key.
    page.wait_for_selector("#warnings li")
    assert "frobnicate" in page.inner_text("#warnings")
    assert json.loads(page.inner_text("#parsed"))["memory"] == 256
    assert not ui.h.has_domain("web-1")  # the check created nothing
    page.click("#create")
    page.wait_for_url(re.compile(r".*/ui/domain\?name=web-1$"))
    ui.h.wait_console("web-1", READY)
    page.goto(ui.base + "/ui/")
    page.fill("#filter", "web")
    row = page.locator("#domains tbody tr[data-name=web-1]")
    assert row.locator("td.state").inner_text() == "running"
    assert page.locator("#domains tbody tr").count() == 1
    assert ui.h.domain("web-1")["state"] == "running"


def samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """The samples of series `name` in a scrape whose labels include `labels`."""
    return [(s.labels, s.value) for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def test_metrics_move_when_the_guest_writes(ui: Ui) -> None:
    def host_bytes() -> float:
        found = samples(ui.metrics(), "xenia_domain_block_write_bytes_total",
                        domain="web-1", disk="xvda")
        assert len(found) == 1, f"web-1's xvda write counter in /metrics: {found}"
        return found[0][1]

    def guest_bytes() -> int:  # field 7 of /sys/block/X/stat: sectors written
        return int(ui.h.run("web-1", "cat /sys/block/vda/stat").split()[6]) * 512

    before_host, before_guest = host_bytes(), guest_bytes()
    ui.h.run("web-1", "dd if=/dev/urandom of=/dev/vda bs=64k count=64 oflag=direct "
                      "2>/dev/null; sync")
    written = guest_bytes() - before_guest
    assert written >= 4 << 20  # the guest's own count of what it wrote
    grew = host_bytes() - before_host
    assert written <= grew <= written + (1 << 20), (written, grew)
    info = samples(ui.metrics(), "xenia_domain_info", domain="web-1")
    assert len(info) == 1 and info[0][0]["type"] == "pv" and info[0][0]["host"]
    # The host is in the info series only, not on the counters.
    assert "host" not in samples(ui.metrics(), "xenia_domain_cpu_seconds_total",
                                 domain="web-1")[0][0]


def test_serial_console_runs_a_typed_command(ui: Ui) -> None:
    page = ui.page()
    page.goto(ui.base + "/ui/domain?name=web-1")
    page.click("#console-open")
    page.wait_for_selector("#terminal[data-state=open]")
    page.click("#terminal")
    page.keyboard.type("echo $((6*7))-from-the-browser\n")
    text = """() => { const b = window.xeniaTerm.buffer.active; let s = "";
        for (let i = 0; i < b.length; i++) s += b.getLine(i).translateToString(true) + "\\n";
        return s; }"""
    wait_until(lambda: "42-from-the-browser" in page.evaluate(text), timeout=30,
               what="the command's output in the browser terminal")


def test_graph_has_points(ui: Ui) -> None:
    page = ui.page()
    page.goto(ui.base + "/ui/domain?name=web-1")
    page.wait_for_selector("#graph-cpu canvas")
    # The page redraws its graphs every 5 s from the ring buffer (sampled every 1 s here).
    wait_until(lambda: int(page.get_attribute("#graph-cpu", "data-points") or 0) >= 2,
               timeout=30, interval=0.5, what="points in the CPU graph")
    hist = page.evaluate("() => window.xenia.api('GET', '/v1/domains/web-1/history')")
    assert len(hist["t"]) >= 2 and all(c >= 0 for c in hist["cpu"])
    assert max(hist["memory_mib"]) > 0


def test_read_only_token_sees_the_refusal(ui: Ui) -> None:
    page = ui.page("ro")
    page.goto(ui.base + "/ui/domain?name=web-1")
    page.wait_for_selector("#dom-state")
    page.click("button[data-act=pause]")
    page.wait_for_selector("#msg:not([hidden])")
    assert "lacks the scope 'power'" in page.inner_text("#msg")
    assert ui.h.domain("web-1")["state"] == "running"


def test_start_button_boots_a_preserved_domain(ui: Ui) -> None:
    ui.h.xenia("console", "web-1", input="poweroff -f\n", check=False)
    wait_until(lambda: ui.h.domain("web-1")["state"] == "shutdown", timeout=60,
               what="web-1 shut down (on_poweroff = preserve)")
    # Without `power`: the list shows the state; the page shows Start, unusable, saying
    # why, and the server refuses the request itself.
    page = ui.page("ro")
    page.goto(ui.base + "/ui/?q=web-1")
    assert page.locator("#domains tr[data-name=web-1] td.state").inner_text() == "shutdown"
    page.click("#domains tr[data-name=web-1] a")
    page.wait_for_selector("button[data-act=start]:visible")
    assert page.is_disabled("button[data-act=start]")
    # What a stopped domain cannot do is not offered.
    assert page.is_hidden("button[data-act=shutdown]") and page.is_hidden("button[data-act=pause]")
    assert "token 'ro' lacks the scope 'power'" in page.inner_text("#start-hint")
    said = page.evaluate("""() => window.xenia.api('POST', '/v1/domains/web-1/start')
        .then(() => 'started', (e) => e.message)""")
    assert "token 'ro' lacks the scope 'power'" in said
    assert ui.h.domain("web-1")["state"] == "shutdown"
    # With it: a click boots it again, and the page says so.
    page = ui.page()
    page.goto(ui.base + "/ui/domain?name=web-1")
    page.wait_for_selector("button[data-act=start]:visible")
    assert page.is_hidden("#start-hint")
    page.click("button[data-act=start]")
    page.wait_for_selector("button[data-act=start]", state="hidden")
    assert " · running · " in page.inner_text("#dom-state")
    assert page.is_visible("button[data-act=shutdown]")
    assert page.is_hidden("button[data-act=unpause]")
    assert page.inner_text("#msg") == "Start: done"
    ui.h.wait_console("web-1", READY)  # the console log is the new boot's
    assert ui.h.domain("web-1")["state"] == "running"


def test_hvm_screen_through_novnc(ui: Ui) -> None:
    # A blank disk: SeaBIOS finds nothing to boot and says so on the screen.
    blank = volume(ui.h, "blank", "1M", fmt="raw")
    cfg = write_xl_cfg(ui.h.cfgdir / "h1.cfg", {
        "name": "h1", "type": "hvm", "memory": 128, "vcpus": 1, "vnc": True, "vif": [],
        "disk": [f"{blank},raw,hda,rw"]})
    ui.h.xenia("create", str(cfg))
    page = ui.page()
    page.goto(ui.base + "/ui/domain?name=h1")
    page.wait_for_selector("#vnc-section:not([hidden])")
    page.click("#vnc-open")
    page.wait_for_selector("#vnc[data-state=connected]")
    # Distinct colours on the noVNC canvas: SeaBIOS's text on black, not an empty screen.
    colours = """() => { const c = document.querySelector('#vnc canvas');
        if (!c || !c.width) return 0;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const seen = new Set();
        for (let i = 0; i < d.length; i += 16) seen.add((d[i] << 16) | (d[i+1] << 8) | d[i+2]);
        return seen.size; }"""
    wait_until(lambda: page.evaluate(colours) > 1, timeout=60, interval=0.5,
               what="a non-blank VNC screen")


def test_single_host_page_shows_this_host(ui: Ui) -> None:
    page = ui.page()
    page.goto(ui.base + "/ui/host")
    page.wait_for_selector("#hosts tbody tr")
    assert "not part of a cluster" in page.inner_text("#cluster-note")
    rows = page.locator("#hosts tbody tr")
    assert rows.count() == 1
    host = page.evaluate("() => window.xenia.api('GET', '/v1/host')")
    assert rows.first.get_attribute("data-host") == host["host"]
    assert rows.first.locator("td.state").inner_text() == "up"
    assert rows.first.locator("td.domains").inner_text() == str(len(ui.h.domains()))
    # No cluster: nothing to put in maintenance or evacuate.
    assert page.locator("#hosts button").count() == 0


def test_save_shows_progress_then_the_result(ui: Ui) -> None:
    page = ui.page()
    page.goto(ui.base + "/ui/domain?name=web-1")
    page.wait_for_selector("#dom-state")
    target = ui.saves / "web-1.save"
    page.fill("#save-file", str(target))
    page.check("#save-keep")
    seen: list[str] = []
    page.expose_function("xeniaSeen", lambda status: seen.append(status))
    # Every status the progress box takes, as the page sets it.
    page.evaluate("""() => new MutationObserver(() => window.xeniaSeen(
        document.getElementById('progress').dataset.status || '')).observe(
        document.getElementById('progress'), {attributes: true})""")
    page.click("button[data-act=save]")
    page.wait_for_selector("#progress[data-status=completed]", timeout=120_000)
    assert "saving" in seen  # shown while the save ran, before its answer
    text = page.inner_text("#progress .text")
    assert f"Saved to {target}" in text and " MiB in " in text
    assert page.get_attribute("#progress", "data-pct") == "100.0"
    assert target.stat().st_size > 1 << 20
    assert ui.h.domain("web-1")["state"] == "running"  # -c: kept running


def test_image_build_shows_its_progress_lines(ui: Ui) -> None:
    # The build's one package comes from the test cache, as a fresh host's first build
    # would have downloaded it.
    cache = ui.h.root / "state" / "images" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    for deb in (CACHE / "debs").glob("busybox-static_*.deb"):
        shutil.copy(deb, cache / deb.name)
    # Without the admin scope: the server's refusal, naming the scope.
    page = ui.page()
    page.goto(ui.base + "/ui/images")
    page.select_option("#build-name", "rootfs")
    page.click("#build-go")
    page.wait_for_selector("#msg:not([hidden])")
    assert "admin" in page.inner_text("#msg")
    page = ui.page("admin")
    page.goto(ui.base + "/ui/images")
    page.select_option("#build-name", "rootfs")
    page.check("#build-force")
    page.click("#build-go")
    page.wait_for_selector("#progress[data-status=completed]", timeout=120_000)
    log = page.inner_text("#build-log")
    # The lines `xenia image build rootfs` prints, in order, ending with the result.
    assert log.index("Unpacking busybox-static") < log.index("Image rootfs ready")
    text = page.inner_text("#progress .text")
    tree = Path(text.split(": rootfs ", 1)[1].strip())
    assert text.startswith("Image rootfs built") and (tree / "bin" / "busybox").is_file()
    assert tree.is_relative_to(ui.h.root / "state" / "images")


def test_failed_test_keeps_screenshots(ui: Ui) -> None:
    # What the autouse fixture does for a failed test, checked on a page of this one.
    page = ui.page()
    page.goto(ui.base + "/ui/")
    page.wait_for_selector("#domains tbody tr")
    kept = ui.keep_screenshots("keep-screenshots-check")
    assert kept and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in kept)
    for p in kept:
        p.unlink()


def test_no_page_requested_another_origin(ui: Ui) -> None:
    assert len(ui.requests) > 20  # the tests above did load pages
    assert ui.foreign_requests() == []

"""Headless Chromium (Debian's, driven by playwright) for the web UI's tests: a browser
whose every request is recorded, pages logged in with a named token, and screenshots of
a failed test's pages kept in $XENIA_UI_SHOTS (default /var/tmp/xenia-ui-shots).

`netns`: run the browser inside that network namespace (a host of multihost.py listens
on an address that exists only there); playwright talks to it over pipes, not TCP.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api as playwright_api

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(os.environ.get("XENIA_UI_SHOTS", "/var/tmp/xenia-ui-shots"))


@dataclass
class Browser:
    browser: Any
    base: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    pages: list[Any] = field(default_factory=list)

    def page(self, token: str | None = "full") -> Any:
        """A new browser context (its own cookies), logged in with `token` when given."""
        ctx = self.browser.new_context(ignore_https_errors=True)
        page = ctx.new_page()
        page.on("request", lambda r: self.requests.append(r.url))
        page.set_default_timeout(30_000)
        self.pages.append(page)
        if token is not None:
            page.goto(self.base + "/ui/login")
            page.fill("#token", self.tokens[token])
            page.click("button[type=submit]")
            page.wait_for_url(self.base + "/ui/")
        return page

    def keep_screenshots(self, test: str) -> list[Path]:
        """A PNG of each open page, named after the test; their paths."""
        SHOTS.mkdir(parents=True, exist_ok=True)
        kept = []
        for i, page in enumerate(self.pages):
            if not page.is_closed():
                path = SHOTS / f"{test}-{i}.png"
                page.screenshot(path=str(path), full_page=True)
                print(f"screenshot: {path}")
                kept.append(path)
        return kept

    def close_pages(self) -> None:
        for page in self.pages:
            if not page.is_closed():
                page.context.close()  # closes the page's WebSockets (the console takes one)
        self.pages.clear()

    def foreign_requests(self) -> list[str]:
        """The recorded requests that went to another origin than `base`."""
        return [u for u in self.requests
                if not (u.startswith(self.base + "/") or u.startswith(("data:", "blob:")))]


@contextlib.contextmanager
def chromium(netns: str | None = None) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-deps.sh --test")
    exe, tmp = CHROMIUM, None
    if netns is not None:
        # playwright takes an executable, not an argv: a two-line launcher (no shell).
        tmp = tempfile.NamedTemporaryFile("w", suffix=".py", prefix="xenia-chromium-",
                                          delete=False)
        tmp.write(f"#!{sys.executable}\nimport os, sys\nos.execvp('ip', ['ip', 'netns', "
                  f"'exec', {netns!r}, {CHROMIUM!r}, *sys.argv[1:]])\n")
        tmp.close()
        os.chmod(tmp.name, stat.S_IRWXU)
        exe = tmp.name
    pw = playwright_api.sync_playwright().start()
    browser = None
    try:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield Browser(browser)
    finally:
        if browser is not None:
            browser.close()
        pw.stop()
        if tmp is not None:
            os.unlink(tmp.name)


def screenshots_on_failure(request: pytest.FixtureRequest, b: Browser) -> Iterator[None]:
    """The body of each UI module's autouse fixture: keep the pages of a failed test, then
    close every page of the test."""
    from tests.integration.conftest import failed

    yield
    if failed(request):
        b.keep_screenshots(request.node.name)
    b.close_pages()

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Host, Image

# .deb downloads and the built image are kept between runs.
CACHE = Path("/var/tmp/xenia-test-cache")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def failed(request: pytest.FixtureRequest) -> bool:
    node = request.node
    return any(getattr(getattr(node, f"rep_{w}", None), "failed", False)
               for w in ("setup", "call"))


@pytest.fixture(scope="session")
def tiny_image() -> Image:
    from xenia.images.tiny import build_tiny

    img = build_tiny(CACHE / "images", cache_dir=CACHE / "debs", progress=lambda s: None)
    return Image(kernel=Path(img.kernel), initrd=Path(img.initrd))


@pytest.fixture
def host(request: pytest.FixtureRequest, tiny_image: Image) -> Iterator[Host]:
    h = Host(tiny_image)
    try:
        h.start_daemon()
        yield h
    finally:
        if failed(request):
            h.dump_logs()
        h.cleanup()


# One xeniad for all tests of a module that asks for it (its module defines
# `host` as `shared_host`): starting and stopping a daemon costs 2-5 s a test. Each test
# still starts with no domains and no networks, and with a running daemon.
@pytest.fixture(scope="module")
def module_host(tiny_image: Image) -> Iterator[Host]:
    h = Host(tiny_image)
    try:
        h.start_daemon()
        yield h
    finally:
        h.cleanup()


@pytest.fixture
def shared_host(request: pytest.FixtureRequest, module_host: Host) -> Iterator[Host]:
    h = module_host
    if h.daemon is None or h.daemon.poll() is not None:  # a test before killed it
        h.start_daemon()
    h.log_mark = h.daemon_log.stat().st_size
    try:
        yield h
    finally:
        if failed(request):
            h.dump_logs()
        if h.daemon is None or h.daemon.poll() is not None:
            h.start_daemon()
        h.clear()

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

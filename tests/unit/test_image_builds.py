"""Image builds run by xeniad (images/builds.py): the error paths. The real build through
the API and the web UI: tests/integration/test_ui.py."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from xenia.errors import InUse, InvalidConfig, NotFound
from xenia.images import builds
from xenia.images.builds import ImageBuilds


def test_an_unknown_target_is_refused_with_the_targets(tmp_path: Path) -> None:
    async def go() -> None:
        with pytest.raises(InvalidConfig, match="no such target; one of tiny, rootfs"):
            ImageBuilds(tmp_path).start("tinny", False)

    asyncio.run(go())


def test_one_build_at_a_time_and_a_failure_is_reported(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def fake(images: Path, name: str, force: bool, progress) -> dict[str, str]:  # type: ignore[no-untyped-def]
        progress("step one")
        release.wait(10)
        raise InvalidConfig("Failed to build image 'rootfs': no busybox")

    monkeypatch.setattr(builds, "build_image", fake)

    async def go() -> None:
        b = ImageBuilds(tmp_path)
        first = b.start("rootfs", False)
        with pytest.raises(InUse, match=f"the build of 'rootfs' \\({first.id}\\) runs"):
            b.start("tiny", False)
        release.set()
        while b.get(first.id).finished is None:
            await asyncio.sleep(0.01)
        view = b.get(first.id).view()
        assert view["status"] == "failed" and "no busybox" in view["message"]
        assert view["lines"] == ["step one"]
        with pytest.raises(NotFound, match="image build 'nope'"):
            b.get("nope")

    asyncio.run(go())


def test_the_cli_offers_exactly_the_targets_xeniad_builds() -> None:
    from xenia.cli import images as cli_images

    assert cli_images.TARGETS == builds.TARGETS

"""Image builds: one function for every `xenia image build` target, and the builds xeniad
runs for the API (`POST /v1/images/builds`), so that the web UI can start one and follow
its progress lines as the CLI prints them.

A build runs in a thread (it unpacks Debian packages and writes files); its progress
lines are kept with the build, and a page polls them. One build at a time per host: the
targets share the package cache and, for the HVM images, one output directory, and a
second build would only wait on the first one's lock.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xenia.errors import InUse, InvalidConfig, NotFound, XeniaError

log = logging.getLogger(__name__)

# HVM images (firmware boot of the tiny kernel): target name -> build_hvm_images() key.
HVM_IMAGES = {"hvm-disk": "bios-disk", "uefi-disk": "uefi-disk", "hvm-iso": "iso"}
TARGETS = ("tiny", "rootfs", "driver", *HVM_IMAGES)
KEEP = 20  # finished builds remembered for their pages
MAX_LINES = 500  # progress lines kept per build (a build prints a few dozen)


def build_image(images: Path, name: str, force: bool,
                progress: Callable[[str], None]) -> dict[str, str]:
    """Build target `name` into `images` (or find it built); what it made, by kind."""
    if name == "rootfs":  # a root filesystem for container domains (images/rootfs.py)
        from xenia.images.rootfs import build_rootfs

        return {"rootfs": str(build_rootfs(images, force=force, progress=progress).path)}
    if name in HVM_IMAGES:
        from xenia.images.hvm import build_hvm_images

        paths = build_hvm_images(images, force=force, progress=progress)
        return {"cdrom" if name == "hvm-iso" else "disk": str(paths[HVM_IMAGES[name]])}
    if name in ("tiny", "driver"):  # driver: tiny plus an NBD server (images/driver.py)
        from xenia.images.driver import build_driver
        from xenia.images.tiny import build_tiny

        build = build_driver if name == "driver" else build_tiny
        img = build(images, force=force, progress=progress)
        return {"kernel": str(img.kernel), "ramdisk": str(img.initrd)}
    raise InvalidConfig(f"Failed to build image '{name}': no such target; one of "
                        + ", ".join(TARGETS))


@dataclass
class ImageBuild:
    id: str
    name: str
    force: bool
    status: str = "building"  # then completed or failed
    lines: list[str] = field(default_factory=list)
    result: dict[str, str] = field(default_factory=dict)
    message: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def line(self, text: str) -> None:
        self.lines.append(text)
        del self.lines[:-MAX_LINES]

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "force": self.force, "status": self.status,
                "lines": list(self.lines), "result": dict(self.result),
                "message": self.message, "started": self.started, "finished": self.finished}


class ImageBuilds:
    def __init__(self, images: Path) -> None:
        self.images = images
        self.builds: dict[str, ImageBuild] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def running(self) -> ImageBuild | None:
        return next((b for b in self.builds.values() if b.finished is None), None)

    def start(self, name: str, force: bool) -> ImageBuild:
        if name not in TARGETS:
            raise InvalidConfig(f"Failed to build image '{name}': no such target; one of "
                                + ", ".join(TARGETS))
        busy = self.running()
        if busy is not None:
            raise InUse(f"Failed to build image '{name}': the build of '{busy.name}' "
                        f"({busy.id}) runs; wait for it to end")
        build = ImageBuild(id=secrets.token_hex(6), name=name, force=force)
        self.builds[build.id] = build
        for old in [b for b in self.builds.values() if b.finished is not None][:-KEEP]:
            del self.builds[old.id]
        task = asyncio.create_task(self._run(build))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return build

    def get(self, build_id: str) -> ImageBuild:
        build = self.builds.get(build_id)
        if build is None:
            raise NotFound(f"Failed to find image build '{build_id}': it never ran here or "
                           f"is forgotten (the last {KEEP} are kept)")
        return build

    async def _run(self, build: ImageBuild) -> None:
        try:
            build.result = await asyncio.to_thread(build_image, self.images, build.name,
                                                   build.force, build.line)
            build.status, build.message = "completed", f"Image {build.name} built"
        except XeniaError as e:
            build.status, build.message = "failed", e.message
        except Exception as e:  # an unexpected failure is reported, never kills xeniad
            log.exception("image build %s", build.name)
            build.status = "failed"
            build.message = f"Failed to build image '{build.name}': {e}"
        finally:
            build.finished = time.time()
            log.info("image build %s of %s: %s %s", build.id, build.name, build.status,
                     build.message)

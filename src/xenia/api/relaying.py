"""What the WebSocket relays share (api/webui.py's for the browser, cluster/console.py's
between members): both copy two ways until one direction ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


async def until_first(*copies: Coroutine[Any, Any, None]) -> list[asyncio.Task[None]]:
    """Run a relay's copies until one ends, then cancel and reap the others: the end of
    either direction ends the session. The tasks, in order (the ended one's exception is
    still there to read)."""
    tasks = [asyncio.create_task(c) for c in copies]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
    return tasks

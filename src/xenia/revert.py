"""Revert: undo steps of a multi-step operation, run in reverse unless it succeeded.

Incus's `revert` package is the model. Each step that changes something registers its
undo right after it is done; the operation calls `success()` at its end. If the block is
left without that (an exception, a cancel, an early return), the undo steps run last
first, so a failed operation leaves the host as it was:

    async with Revert() as revert:
        await plug(tap)
        revert.add(lambda: unplug(tap))
        await qmp.device_add(dev)
        revert.success()

An undo step may be a plain or an async function. Its own failure is logged and the
next one still runs; the operation's exception is what the caller sees. `with` works
too, for operations whose undo steps are all plain functions.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

Undo = Callable[[], Awaitable[Any] | Any]


class Revert:
    """A stack of undo steps; `success()` drops them, leaving the block otherwise runs
    them (last added first)."""

    def __init__(self) -> None:
        self._steps: list[Undo] = []

    def add(self, undo: Undo) -> None:
        """Register the undo of a step that is done."""
        self._steps.append(undo)

    def success(self) -> None:
        """The operation is complete: nothing will be undone."""
        self._steps.clear()

    async def undo(self) -> None:
        """Run the undo steps now (last first), each at most once."""
        while self._steps:
            step = self._steps.pop()
            with _logged(step):
                result = step()
                if inspect.isawaitable(result):
                    await result

    def undo_sync(self) -> None:
        """undo() for plain undo steps (a `with` block)."""
        while self._steps:
            step = self._steps.pop()
            with _logged(step):
                result = step()
                if inspect.iscoroutine(result):
                    result.close()
                    raise TypeError(f"{_name(step)} is async; use `async with Revert()`")

    async def __aenter__(self) -> Revert:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.undo()

    def __enter__(self) -> Revert:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.undo_sync()


def _name(step: Undo) -> str:
    return getattr(step, "__qualname__", None) or repr(step)


@contextlib.contextmanager
def _logged(step: Undo) -> Iterator[None]:
    """An undo step's own failure is logged, not raised: the next steps must still run,
    and the operation's error is the one the caller sees."""
    try:
        yield
    except Exception:  # noqa: BLE001
        log.warning("undoing a step failed (%s)", _name(step), exc_info=True)

"""Revert: undo steps run last first unless the operation succeeded; a failing undo step
is logged and does not hide the operation's own error or stop the other steps."""

from __future__ import annotations

import asyncio
import logging

import pytest

from xenia.revert import Revert


def test_undo_runs_in_reverse_when_the_block_fails() -> None:
    done: list[str] = []
    with pytest.raises(RuntimeError, match="step 3"), Revert() as revert:
        done.append("1")
        revert.add(lambda: done.append("undo 1"))
        done.append("2")
        revert.add(lambda: done.append("undo 2"))
        raise RuntimeError("step 3")
    assert done == ["1", "2", "undo 2", "undo 1"]


def test_success_keeps_everything() -> None:
    done: list[str] = []
    with Revert() as revert:
        revert.add(lambda: done.append("undo"))
        revert.success()
    assert done == []


def test_leaving_without_success_undoes_too() -> None:
    """An early return is not a success: the steps so far are undone."""
    done: list[str] = []

    def operation() -> str:
        with Revert() as revert:
            revert.add(lambda: done.append("undo"))
            return "early"

    assert operation() == "early" and done == ["undo"]


def test_a_failing_undo_is_logged_and_the_rest_still_run(
        caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []

    def broken() -> None:
        raise OSError("undo broke")

    with caplog.at_level(logging.WARNING, logger="xenia.revert"):
        with pytest.raises(ValueError, match="the real error"), Revert() as revert:
            revert.add(lambda: done.append("first"))
            revert.add(broken)
            raise ValueError("the real error")
    assert done == ["first"]
    assert "undoing a step failed (test_a_failing_undo_is_logged_and_the_rest_still_run" \
           ".<locals>.broken)" in caplog.text and "undo broke" in caplog.text


def test_async_steps_and_cancel() -> None:
    """A cancelled operation undoes what it did, awaiting async undo steps."""
    done: list[str] = []
    started = asyncio.Event()

    async def unplug() -> None:
        await asyncio.sleep(0)
        done.append("unplug")

    async def operation() -> None:
        async with Revert() as revert:
            revert.add(unplug)
            revert.add(lambda: done.append("plain"))
            started.set()
            await asyncio.sleep(3600)
            revert.success()

    async def main() -> None:
        task = asyncio.create_task(operation())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert done == ["plain", "unplug"]


def test_async_step_in_a_plain_block_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    async def unplug() -> None:
        raise AssertionError("never run")

    with caplog.at_level(logging.WARNING, logger="xenia.revert"), Revert() as revert:
        revert.add(unplug)
    assert "is async; use `async with Revert()`" in caplog.text

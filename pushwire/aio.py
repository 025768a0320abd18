"""Small asyncio helpers shared by the server's parts."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any], step: float = 0.5) -> None:
    """Cancel `task` and wait until it is gone. On Python 3.11 a cancellation can be lost
    when it races with a timeout inside the task (asyncio.wait_for, redis-py's reads), so
    cancel again until it is really done."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=step)
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.result()

"""Waiting for the native side from asyncio without threads or the GIL.

The native stream owns a socket whose read end becomes readable when it has news (see
``pycdc/src/signal.rs``); coroutines sleep in the event loop until then. Several coroutines
may wait on one stream at once (``async for`` in one task, ``stop()`` in another): one
reader callback wakes them all and each re-checks its own condition.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Optional


class Waker:
    __slots__ = ("_core", "_futures", "_loop")

    def __init__(self, core: Any) -> None:
        self._core = core
        self._futures: list[asyncio.Future[None]] = []
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            self._release()
        fut: asyncio.Future[None] = loop.create_future()
        if self._loop is None:
            loop.add_reader(self._core.fileno(), self._wake)
            self._loop = loop
        self._futures.append(fut)
        try:
            await fut
        finally:
            if fut in self._futures:
                self._futures.remove(fut)
            if not self._futures:
                self._release()

    async def next(self) -> Any:
        """The core's next ready item, sleeping on the wake-up socket until there is one."""
        item = self._core.next_ready()
        while item is None:
            await self.wait()
            item = self._core.next_ready()
        return item

    def _wake(self) -> None:
        self._core.drain()
        futures, self._futures = self._futures, []
        self._release()
        for f in futures:
            if not f.done():
                f.set_result(None)

    def _release(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError, ValueError):  # the loop is closed already
                self._loop.remove_reader(self._core.fileno())
            self._loop = None


async def run_op(op: Any) -> str:
    """Awaits a native one-shot operation (``_pgcdc._Op``) and returns its result."""
    waker = Waker(op)
    while True:
        result = op.result()
        if result is not None:
            return result  # type: ignore[no-any-return]
        await waker.wait()

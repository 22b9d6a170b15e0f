"""Requests that arrive together are issued together: one worker takes whatever is queued,
runs it as one batch in a thread (one redemption, one group commit), and starts again. A lone
request waits for nothing; under load, batches grow by themselves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    def __init__(
        self, work: Callable[[Sequence[Item]], list[Result]], *, max_batch: int = 64
    ) -> None:
        self._work = work
        self._max = max_batch
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self._max], self._queue[self._max :]
            try:
                results = await asyncio.to_thread(self._work, [item for item, _ in batch])
            except BaseException as exc:  # handed to each waiting request, which reports it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

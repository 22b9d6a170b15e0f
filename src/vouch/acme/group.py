"""Work that threads hand in together is done together: one thread at a time (the leader) runs
everything queued so far as one batch, so concurrent finalizations share their transactions and
disk waits. A lone caller waits for nothing; under load, batches grow by themselves.

Leadership passes to the oldest waiting caller after each batch, so no caller serves others for
long (each runs at most one batch besides waiting for its own).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Slot(Generic[Item, Result]):
    __slots__ = ("done", "error", "item", "lead", "result")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.done = threading.Event()
        self.lead = False
        self.result: Result | None = None
        self.error: BaseException | None = None


class GroupWork(Generic[Item, Result]):
    """``work`` gets a batch and returns, in order, each item's result or the exception that
    item's caller should raise."""

    def __init__(
        self,
        work: Callable[[Sequence[Item]], Sequence[Result | BaseException]],
        *,
        max_batch: int = 32,
    ) -> None:
        self._work = work
        self._max = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Slot[Item, Result]] = []
        self._busy = False

    def submit(self, item: Item) -> Result:
        slot: _Slot[Item, Result] = _Slot(item)
        with self._lock:
            self._queue.append(slot)
            slot.lead = not self._busy
            self._busy = True
        if not slot.lead:
            slot.done.wait()
        if slot.lead:
            self._run_one_batch()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]  # set with done when no error

    def _run_one_batch(self) -> None:
        with self._lock:
            batch, self._queue = self._queue[: self._max], self._queue[self._max :]
        try:
            outcomes = list(self._work([s.item for s in batch]))
            if len(outcomes) != len(batch):
                raise RuntimeError("a batch returned the wrong number of results")
        except BaseException as exc:  # handed to every caller of the batch, which raises it
            outcomes = [exc] * len(batch)
        for slot, outcome in zip(batch, outcomes, strict=True):
            slot.lead = False
            if isinstance(outcome, BaseException):
                slot.error = outcome
            else:
                slot.result = outcome
        with self._lock:
            following = self._queue[0] if self._queue else None
            if following is None:
                self._busy = False
            else:
                following.lead = True
        for slot in batch:
            slot.done.set()
        if following is not None:
            following.done.set()

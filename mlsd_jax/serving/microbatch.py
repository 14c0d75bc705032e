"""Server-side micro-batching: a queue per model version and signature, drained by one thread.

The event loop validates and encodes a request, then :meth:`Batcher.submit` queues it and
returns an asyncio future. The batch thread takes the oldest request and every queued request
of the same shape group (same padded dims) up to ``max_batch_size`` rows, runs them as one
padded batch and resolves the futures on their event loops. There is no fixed wait window: a
batch starts as soon as the device is free, so at low load a request runs alone at once, and
under load the requests that arrived during the previous batch form the next one (the batch
size adapts to the arrival rate). ``batch_timeout_ms`` optionally holds an undersized batch while
the device is idle.

Idle fast path: with ``batch_timeout_ms=0``, a request alone in the server (no other request
in flight) that finds nothing queued and no batch running claims the device
(:meth:`Batcher.claim_idle`) and runs at once on the event loop, skipping the two thread
hand-offs (queue -> batch thread -> event loop) that would otherwise be most of a small model's
latency at low load; requests arriving meanwhile queue and form the next batch as usual.

Tail latency: the model runs off the event loop (XLA releases the GIL), so requests keep being
parsed while a batch runs; requests whose deadline passed while queued are dropped before they
use the device; a full queue refuses at once (429) instead of growing the tail.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time
from typing import Any, Callable

from mlsd_jax.serving.errors import ServingError
from mlsd_jax.serving.runtime import BATCH, Executor


@dataclasses.dataclass(eq=False)
class Pending:
    arrays: dict
    sizes: dict
    rows: int
    key: tuple
    deadline: float            # time.monotonic()
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float
    cancelled: bool = False


def _resolve(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _resolve_all(done: list) -> None:
    for future, result, error in done:
        _resolve(future, result, error)


class Batcher:
    """Queues requests for one executor and runs them in padded batches on a thread."""

    def __init__(self, executor: Executor, *, max_batch_size: int, max_queued: int,
                 batch_timeout_ms: float, name: str,
                 on_batch: Callable[[int, int], None] | None = None,
                 on_depth: Callable[[int], None] | None = None):
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_queued = max_queued
        self.timeout = batch_timeout_ms / 1000.0
        self.name = name
        self._on_batch = on_batch or (lambda rows, requests: None)
        self._on_depth = on_depth or (lambda depth: None)
        self._queue: collections.deque[Pending] = collections.deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._busy = False          # a batch is running (on the batch thread or inline)
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, arrays: dict, sizes: dict, deadline: float) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        now = time.monotonic()
        item = Pending(arrays, sizes, sizes.get(BATCH, 1), self.executor.group_key(sizes),
                       deadline, loop, future, now)
        with self._cond:
            if self._stopped:
                raise ServingError("UNAVAILABLE", f"model {self.name} is unloading; retry")
            if len(self._queue) >= self.max_queued:
                raise ServingError("RESOURCE_EXHAUSTED",
                                   f"model {self.name}: {len(self._queue)} requests queued "
                                   f"(batching.max_queued={self.max_queued}); retry later")
            self._queue.append(item)
            depth = len(self._queue)
            # The batch thread waits only for a first request (or, with a batch timeout, for a
            # full batch); a wake-up per request would hand it the GIL once per request.
            if self.timeout > 0 or (depth == 1 and not self._busy):
                self._cond.notify()
        self._on_depth(depth)
        return future

    def claim_idle(self) -> bool:
        """Claims the idle device for one request run on the caller's thread: ``True`` when
        nothing is queued or running and ``batch_timeout_ms`` is 0; then call
        :meth:`release_idle` (with the rows run, or 0 if it failed) when done."""
        if self.timeout > 0:
            return False
        with self._cond:
            if self._busy or self._queue or self._stopped:
                return False
            self._busy = True
            return True

    def release_idle(self, rows: int) -> None:
        with self._cond:
            self._busy = False
            if self._queue:
                self._cond.notify()
        if rows:
            self._on_batch(rows, 1)

    def cancel(self, future: asyncio.Future) -> bool:
        """Drops a request whose caller stopped waiting (deadline): it is not run if still
        queued, and its result is discarded if already running (call on its event loop).
        ``True`` when it was still queued (it never ran)."""
        future.cancel()
        with self._cond:
            for item in self._queue:
                if item.future is future:
                    item.cancelled = True
                    return True
        return False

    def _take(self) -> list[Pending] | None:
        with self._cond:
            while (not self._queue or self._busy) and not self._stopped:
                self._cond.wait()
            if self._stopped and not self._queue:
                return None
            if self.timeout > 0:
                end = self._queue[0].enqueued + self.timeout
                while (sum(p.rows for p in self._queue) < self.max_batch_size
                       and not self._stopped):
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            first = self._queue.popleft()
            batch, rows, keep = [first], first.rows, collections.deque()
            while self._queue:
                item = self._queue.popleft()
                if item.key == first.key and rows + item.rows <= self.max_batch_size:
                    batch.append(item)
                    rows += item.rows
                else:
                    keep.append(item)
                    if rows >= self.max_batch_size:
                        break
            keep.extend(self._queue)
            self._queue = keep
            depth = len(self._queue)
            self._busy = True
        self._on_depth(depth)
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._busy = False

    def _run(self, batch: list[Pending]) -> None:
        now = time.monotonic()
        live = []
        for item in batch:
            if item.cancelled or item.future.done():
                continue
            if item.deadline <= now:
                self._deliver(item, None, ServingError(
                    "DEADLINE_EXCEEDED", f"model {self.name}: the request's deadline passed "
                                         f"while it waited in the batch queue"))
                continue
            live.append(item)
        if not live:
            return
        try:
            results = self.executor.run([(p.arrays, p.sizes) for p in live])
        except Exception as e:  # noqa: BLE001 - the model failed; each caller decides
            for item in live:
                self._deliver(item, None, e)
            return
        self._on_batch(sum(p.rows for p in live), len(live))
        # One wake-up per event loop for the whole batch, not one per request.
        by_loop: dict = {}
        for item, result in zip(live, results):
            error = result if isinstance(result, Exception) else None
            by_loop.setdefault(item.loop, []).append(
                (item.future, None if error is not None else result, error))
        for loop, done in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve_all, done)
            except RuntimeError:  # the callers' event loop is closed
                pass

    @staticmethod
    def _deliver(item: Pending, result, error) -> None:
        try:
            item.loop.call_soon_threadsafe(_resolve, item.future, result, error)
        except RuntimeError:  # the caller's event loop is closed
            pass

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

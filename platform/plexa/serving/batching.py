"""Dynamic batching: requests that arrive together share one ONNX Runtime call.

Each call takes every request already queued, up to `max_batch` rows, and waits up to
`max_wait` for more only while other requests for the model are still being received (the
server counts them in `arriving`): a lone request, or a batch that already holds every request
in flight, runs at once. Rows are stacked, run once, and each caller gets back exactly its own
rows. One batch runs at a time per model while the next one gathers, so under load the batch
grows and the per-call overhead is shared. A model whose calls take less than INLINE_SECONDS
runs on the event loop; a slower one in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from plexa.serving.model import ServedModel

Feeds = dict[str, "np.ndarray"]
# a call expected to take less than this runs on the event loop, which it holds up for less
# than a tenth of the default batching wait: handing a call to a thread and back costs both
# threads tens of µs, more than a small model's batch (whose call in a pool thread also costs
# several times its call on the loop). A longer call runs in a thread, so the loop goes on
# reading requests meanwhile.
INLINE_SECONDS = 250e-6
# the decision follows the median of the last few calls: calls the machine held up (another
# process, a collection) move it only when they are most of them, and a model whose calls
# really grew slower is moved to a thread within RECENT_CALLS // 2 + 1 calls
RECENT_CALLS = 9


@dataclass
class _Pending:
    feeds: Feeds
    rows: int
    future: asyncio.Future[list[np.ndarray]] = field(repr=False)


class Batcher:
    """Queue + one worker task per model; `submit` returns that request's outputs."""

    def __init__(
        self,
        model: ServedModel,
        max_batch: int = 32,
        max_wait: float = 0.002,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_wait < 0:
            raise ValueError("max_batch must be >= 1 and max_wait >= 0")
        self.model, self.max_batch, self.max_wait = model, max_batch, max_wait
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._carry: _Pending | None = None  # a request that did not fit the last batch
        self.arriving = 0  # requests for this model being received and parsed right now
        self._busy = False  # a call is running
        self._recent: deque[float] = deque(maxlen=RECENT_CALLS)  # seconds of recent calls

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, feeds: Feeds, rows: int) -> list[np.ndarray]:
        if self._worker is None or self._worker.done():
            raise RuntimeError("the batcher is not running")
        # the worker's loop: on Python 3.11 each get_running_loop() is a getpid() system call
        future: asyncio.Future[list[np.ndarray]] = self._worker.get_loop().create_future()
        self._queue.put_nowait(_Pending(feeds, rows, future))
        return await future

    async def stop(self) -> None:
        """Finish what is queued, then end the worker (graceful shutdown)."""
        while not self._queue.empty() or self._carry is not None or self._busy:
            await asyncio.sleep(0.005)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def _loop(self) -> None:
        while True:
            batch = await self._gather()
            self._busy = True
            try:
                await self._run(batch)
            finally:
                self._busy = False

    async def _gather(self) -> list[_Pending]:
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, rows = [first], first.rows
        deadline = time.monotonic() + self.max_wait
        while rows < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.monotonic()
                # wait only for requests already being received: a lone request, or a batch
                # that holds every request in flight, runs at once
                if left <= 0 or self.arriving <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            if rows + item.rows > self.max_batch:
                self._carry = item  # first in the next batch: order is kept
                break
            batch.append(item)
            rows += item.rows
        return batch

    def _expected_seconds(self) -> float:
        """The median of the recent calls' seconds; until the first call, infinite (a thread)."""
        return statistics.median(self._recent) if self._recent else float("inf")

    def _timed(self, feeds: Feeds) -> tuple[list[np.ndarray], float]:
        """The model's outputs and the seconds the call took, wherever it ran."""
        started = time.perf_counter()
        outputs = self.model.run(feeds)
        return outputs, time.perf_counter() - started

    async def _run(self, batch: list[_Pending]) -> None:
        import numpy as np

        live = [p for p in batch if not p.future.done()]  # a cancelled caller is skipped
        if not live:
            return
        names = list(live[0].feeds)
        if len(live) == 1:
            feeds = live[0].feeds
        else:
            feeds = {n: np.concatenate([p.feeds[n] for p in live]) for n in names}
        rows = sum(p.rows for p in live)
        try:
            if self._expected_seconds() < INLINE_SECONDS:
                outputs, seconds = self._timed(feeds)  # shorter than handing it to a thread
            else:
                outputs, seconds = await asyncio.to_thread(self._timed, feeds)
            self._recent.append(seconds)
        except Exception as exc:  # delivered to every caller of this batch
            for p in live:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(rows)
        start = 0
        for p in live:
            if not p.future.done():
                p.future.set_result([o[start : start + p.rows] for o in outputs])
            start += p.rows

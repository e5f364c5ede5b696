"""Dynamic batching: concurrent search requests coalesced into one `Backend.search_batch` call.

Contract:
- `submit(queries, k)` queues a validated request and returns a Future of its `Results` (one row per query, at
  most k hits each, and the batch's shard errors when a router answered partially). Requests are served first come, first served.
- A batch closes when the queued requests hold `max_queries` queries, when its oldest request has waited
  `max_wait_s`, or when as many requests are queued as the previous batch held (closed-loop callers whose answers
  went out together are all back: waiting longer only adds latency), whichever comes first. So a lone caller never
  waits, and callers in step are not split over two batches by a short wait. A request never splits across
  batches and one larger than `max_queries` is a batch of its own. The batch is searched once with the largest k
  in it and each request gets its rows trimmed to its own k (a top-k list is a prefix of the top-k' list for
  k < k').
- When a batch of several requests fails, each of its requests is searched again alone, so a request gets exactly
  the answer or the exception it would have got on its own (one bad query fails only its own request).
- `threads` batch loops run at once: while one waits in the back end (FAISS and torch release the GIL) the next
  forms its batch from what arrived meanwhile. A request cancelled while queued is skipped.
- `close()` answers what is already queued without waiting out max_wait, then refuses new requests (BatcherClosed).
It knows nothing about gRPC, HTTP or caching.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from searchrl_retriever.backend import Backend, Results
from searchrl_retriever.metrics import BATCH_QUERIES, BATCH_REQUESTS, QUEUE_WAIT

log = logging.getLogger(__name__)


class BatcherClosed(RuntimeError):
    """The batcher no longer takes requests (the server is stopping): try another replica."""


@dataclass
class _Request:
    queries: list[str]
    k: int
    queued_at: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)


class Batcher:
    def __init__(self, backend: Backend, max_queries: int, max_wait_s: float, threads: int = 1) -> None:
        self.backend = backend
        self.max_queries = max_queries
        self.max_wait_s = max_wait_s
        self._queue: deque[_Request] = deque()
        self._queued_queries = 0
        self._expect = 0  # requests in the last batch taken; 0 before the first
        self._closed = False
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._loop, name=f"batcher-{i}", daemon=True) for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def submit(self, queries: list[str], k: int) -> Future:
        request = _Request(list(queries), k)
        with self._cond:
            if self._closed:
                raise BatcherClosed("the retriever is stopping; retry on another replica")
            self._queue.append(request)
            self._queued_queries += len(request.queries)
            self._cond.notify()
        return request.future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if live:
                self._run(live)

    def _next_batch(self) -> list[_Request] | None:
        """Block until a batch is due (full, its oldest request waited max_wait, the previous batch's count of
        requests is queued, or closing); None once closed and drained."""
        with self._cond:
            while True:
                if self._queue:
                    wait = self._queue[0].queued_at + self.max_wait_s - time.monotonic()
                    due = self._queued_queries >= self.max_queries or 0 < self._expect <= len(self._queue)
                    if due or wait <= 0 or self._closed:
                        return self._take()
                    self._cond.wait(wait)
                elif self._closed:
                    return None
                else:
                    self._cond.wait()

    def _take(self) -> list[_Request]:
        batch, n = [], 0
        while self._queue and (not batch or n + len(self._queue[0].queries) <= self.max_queries):
            request = self._queue.popleft()
            batch.append(request)
            n += len(request.queries)
        self._queued_queries -= n
        self._expect = len(batch)
        if self._queue:
            self._cond.notify()  # another loop may take the rest
        return batch

    def _run(self, batch: list[_Request]) -> None:
        started = time.monotonic()
        for r in batch:
            QUEUE_WAIT.observe(started - r.queued_at)
        queries = [q for r in batch for q in r.queries]
        BATCH_QUERIES.observe(len(queries))
        BATCH_REQUESTS.observe(len(batch))
        try:
            rows = self.backend.search_batch(queries, max(r.k for r in batch))
            if len(rows) != len(queries):
                raise RuntimeError(f"the back end answered {len(rows)} rows for {len(queries)} queries")
        except Exception as e:  # noqa: BLE001 - handed to the callers, never kills the loop
            if len(batch) == 1:
                batch[0].future.set_exception(e)
                return
            log.warning("a batch of %d requests failed (%s); searching each alone", len(batch), e)
            for r in batch:
                self._run([r])
            return
        errors = getattr(rows, "shard_errors", ())  # a router's missing shards concern every request in it
        start = 0
        for r in batch:
            own = rows[start : start + len(r.queries)]
            r.future.set_result(Results([row[: r.k] for row in own], errors))
            start += len(r.queries)

"""The search loop per sample, on an asynchronous engine: every sample advances on its own.

Contract of `await run_samples(engine, batcher, tokenize, protocol, samples, limits, gate)`:
- each sample runs `segment_params` -> generate -> `apply_segment` -> search -> `add_documents` (the public
  per-sample steps of search_loop.py, so the protocol rules, masks, budgets and per-round seeds are exactly the
  batch loop's) without waiting for any other sample: one engine request at a time per sample, as many samples
  at once as the caller runs, and vLLM's continuous batching keeps the engine full;
- its queries go through a `SearchBatcher`, which coalesces the queries of all samples waiting at that moment
  into one search call (at most `max_search_batch` queries, each already cut to `max_query_chars`); a call that
  raises costs only its own samples (empty documents, `Sample.search_failures`, the error in
  `LoopTimings.search_errors`), as in the batch loop;
- generation goes through a `GenerationGate`: `await gate.pause()` waits until no segment is being generated and
  holds new ones back until `resume()`, so weights are reloaded between segments, never under one;
- `LoopTimings` sums each sample's own generation and retrieval seconds and counts each search a sample made as
  one call (so "every call failed" means every search of these samples failed);
- if one sample raises, the others of the call are cancelled and the error propagates.
`run_samples` also returns, per sample, the policy versions (`gate.version()`) its segments were generated under,
in order; a segment never spans a reload. services/rollout/async_worker.py says how such a sample is labelled.
This module does no I/O of its own: the engine, the search function and the tokenizer are passed in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from searchrl.protocol import Document
from searchrl.protocol import Protocol as SearchProtocol
from searchrl_rollout.engine import GenOut, GenParams
from searchrl_rollout.search_loop import (
    LoopLimits,
    LoopTimings,
    Sample,
    SearchFn,
    TokenizeFn,
    add_documents,
    apply_segment,
    segment_params,
)


class AsyncEngine(Protocol):
    async def generate(self, prompt_ids: list[int], params: GenParams) -> GenOut: ...

    async def load_weights(self, directory: str) -> None: ...


class GenerationGate:
    """Lets segments generate while open; `pause()` closes it and returns once no segment is in flight.
    `version()` names the weights the engine holds (the gate's owner changes them only while paused)."""

    def __init__(self, version: Callable[[], int] = lambda: 0) -> None:
        self.version = version
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._running = 0

    async def generate(
        self, engine: AsyncEngine, prompt_ids: list[int], params: GenParams
    ) -> tuple[GenOut, int]:
        """The segment, and the policy version it was generated under."""
        await self._open.wait()
        self._running += 1
        self._idle.clear()
        try:
            return await engine.generate(prompt_ids, params), self.version()
        finally:
            self._running -= 1
            if not self._running:
                self._idle.set()

    async def pause(self) -> None:
        self._open.clear()
        await self._idle.wait()

    def resume(self) -> None:
        self._open.set()


class SearchBatcher:
    """Coalesces concurrent `await search(query, top_k)` calls: the queries waiting when the previous call returns
    go together in the next call of `search_fn` (at most `max_batch` per call, one call at a time), run on a
    worker thread (the search function is synchronous: a gRPC stub or the in-process retriever)."""

    def __init__(self, search_fn: SearchFn, max_batch: int) -> None:
        self.search_fn = search_fn
        self.max_batch = max_batch
        self.calls: list[list[str]] = []  # the queries of each call made, in order
        self._waiting: list[tuple[str, int, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None

    async def search(self, query: str, top_k: int) -> list[Document]:
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append((query, top_k, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        while self._waiting:
            k = self._waiting[0][1]
            batch = [w for w in self._waiting if w[1] == k][: self.max_batch]
            taken = {id(w) for w in batch}
            self._waiting = [w for w in self._waiting if id(w) not in taken]
            queries = [q for q, _, _ in batch]
            self.calls.append(queries)
            try:
                docs = await asyncio.to_thread(self.search_fn, queries, k)
            except Exception as e:  # noqa: BLE001 - handed to every sample of the call, which judges it
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, _, fut), passages in zip(batch, docs, strict=True):
                if not fut.done():
                    fut.set_result(passages)


async def run_sample(
    engine: AsyncEngine,
    batcher: SearchBatcher,
    tokenize: TokenizeFn,
    protocol: SearchProtocol,
    s: Sample,
    limits: LoopLimits,
    timings: LoopTimings,
    gate: GenerationGate,
    versions: list[int],
) -> None:
    """One sample to its end (see the module docstring); appends each segment's policy version to `versions`."""
    while not s.done:
        params = segment_params(s, protocol, limits, s.turns + 1)
        t0 = time.perf_counter()
        out, version = await gate.generate(engine, s.prompt_ids + s.response_ids, params)
        versions.append(version)
        timings.generate_s += time.perf_counter() - t0
        query = apply_segment(s, out, tokenize, protocol, limits)
        if query is None:
            continue
        t0 = time.perf_counter()
        timings.search_calls += 1
        try:
            passages = await batcher.search(query, limits.top_k)
        except Exception as e:  # noqa: BLE001 - as the batch loop: empty documents, the caller judges e
            timings.search_errors.append(e)
            s.search_failures += 1
            passages = []
        timings.retrieve_s += time.perf_counter() - t0
        add_documents(s, query, passages, tokenize, protocol, limits)


async def run_samples(
    engine: AsyncEngine,
    batcher: SearchBatcher,
    tokenize: TokenizeFn,
    protocol: SearchProtocol,
    samples: list[Sample],
    limits: LoopLimits,
    gate: GenerationGate,
) -> tuple[LoopTimings, list[list[int]]]:
    """All `samples` to their end, concurrently; returns the timings and each sample's segment versions."""
    timings = LoopTimings()
    versions: list[list[int]] = [[] for _ in samples]
    tasks = [
        asyncio.create_task(run_sample(engine, batcher, tokenize, protocol, s, limits, timings, gate, v))
        for s, v in zip(samples, versions, strict=True)
    ]
    try:
        await asyncio.gather(*tasks)
    finally:  # after a failure: the other samples are stopped before the error propagates
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return timings, versions

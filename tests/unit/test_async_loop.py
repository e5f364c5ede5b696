"""The per-sample async search loop (services/rollout/async_loop.py) against the batch loop on the scenarios of
test_search_loop.py: every protocol gives the same samples (tokens, masks, log-probs, ends, searches); plus what
only the async loop does (samples advance on their own, queries coalesce, reloads wait between segments)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from searchrl.protocol import R1_SEARCHER, RESEARCH, SEARCH_R1, Document
from searchrl_rollout.async_loop import GenerationGate, SearchBatcher, run_samples
from searchrl_rollout.engine import GenOut, GenParams
from searchrl_rollout.search_loop import LoopLimits, Sample, run_search_loop
from tests.unit.test_search_loop import (
    DEFAULT_LIMITS,
    ScriptedEngine,
    research_limits,
    sr1_limits,
    tokenize,
)


class AsyncScripted:
    """The scripted engine one request at a time, yielding to the event loop so that samples interleave."""

    def __init__(self, scripts: list[list[str]]) -> None:
        self.engine = ScriptedEngine(scripts)
        self.running = 0
        self.most_running = 0

    async def generate(self, prompt_ids: list[int], params: GenParams) -> GenOut:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(0)
            return self.engine.generate([prompt_ids], [params])[0]
        finally:
            self.running -= 1

    async def load_weights(self, directory: str) -> None:
        raise NotImplementedError


def search(queries: list[str], k: int) -> list[list[Document]]:
    return [[Document(q, f"doc-{q}-{i}") for i in range(k)] for q in queries]


def run_async(protocol, scripts, limits, search_fn=search):  # noqa: ANN001, ANN201
    samples = [Sample([i]) for i in range(len(scripts))]
    engine = AsyncScripted([list(s) for s in scripts])
    batcher = SearchBatcher(search_fn, limits.max_search_batch)
    timings, versions = asyncio.run(
        run_samples(engine, batcher, tokenize, protocol, samples, limits, GenerationGate())
    )
    return samples, batcher, engine, timings, versions


def run_sync(protocol, scripts, limits):  # noqa: ANN001, ANN201
    samples = [Sample([i]) for i in range(len(scripts))]
    run_search_loop(ScriptedEngine([list(s) for s in scripts]), search, tokenize, protocol, samples, limits)
    return samples


Q = "<|begin_of_query|> {} <|end_of_query|>"
ANSWER = "</think><answer> a </answer>"
SCENARIOS = {
    "r1-masks": (
        R1_SEARCHER,
        [
            [f"think {Q.format('alpha')}", "so </think><answer> x </answer>"],
            [f"hmm {Q.format('beta')}", ANSWER],
            [ANSWER],
        ],
        DEFAULT_LIMITS,
    ),
    "r1-empty-query-and-search-limit": (
        R1_SEARCHER,
        [[Q.format(" ")], [Q.format("k"), Q.format("k"), Q.format("k"), "never reached"]],
        DEFAULT_LIMITS,
    ),
    "r1-budget": (
        R1_SEARCHER,
        [[Q.format("k")]],
        LoopLimits(top_k=3, max_searches=5, segment_tokens=200, max_response_tokens=len(Q.format("k")) + 10),
    ),
    "r1-segment-length": (R1_SEARCHER, [["abcdefghij"]], LoopLimits(segment_tokens=5)),
    "r1-query-cut-and-split": (
        R1_SEARCHER,
        [[Q.format(f"q{i}{'x' * 50}"), ANSWER] for i in range(5)],
        LoopLimits(top_k=1, max_searches=2, max_query_chars=10, max_search_batch=2),
    ),
    "research": (
        RESEARCH,
        [
            [
                "<think> a </think> <search> q1 </search>",
                " <search>  </search>",
                " <search> q2 </search>",
                " <think> b </think> <answer> \\boxed{x} </answer>",
            ],
            ["<search> q </search>", "done"],
        ],
        research_limits(top_k=1, max_response_tokens=100),
    ),
    "search-r1-actions": (
        SEARCH_R1,
        [
            ["<think> a </think>\n<search> q1 </search>", "\n<think> b </think>\n<answer> x </answer>"],
            ["<answer> y </answer>"],
        ],
        sr1_limits(),
    ),
    "search-r1-invalid-and-last-turn": (
        SEARCH_R1,
        [["I do not know\x03", "<search> q1 </search>", "<search> q2 </search>", "never reached"]],
        sr1_limits(),
    ),
    "search-r1-length-is-invalid": (
        SEARCH_R1,
        [["x" * 50, "<answer> a </answer>"]],
        sr1_limits(segment_tokens=25),
    ),
    "search-r1-obs-cut": (
        SEARCH_R1,
        [["<search> q </search>", "<answer> a </answer>"]],
        sr1_limits(top_k=3, max_obs_tokens=20),
    ),
}


def outcome(s: Sample) -> tuple:
    return (
        s.response_ids,
        s.loss_mask,
        s.logprobs,
        s.finish_reason,
        s.num_searches,
        s.search_failures,
        s.turns,
        s.queries,
    )


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_sample_ends_as_in_the_batch_loop(name):
    protocol, scripts, limits = SCENARIOS[name]
    want = run_sync(protocol, scripts, limits)
    got, batcher, _, timings, versions = run_async(protocol, scripts, limits)
    assert [outcome(s) for s in got] == [outcome(s) for s in want]
    assert all(len(call) <= limits.max_search_batch for call in batcher.calls)
    assert sorted(q for call in batcher.calls for q in call) == sorted(q for s in got for q in s.queries if q)
    assert timings.search_calls == sum(s.num_searches for s in got) - sum(
        q == "" for s in got for q in s.queries
    )
    assert versions == [[0] * s.turns for s in got]


def test_a_slow_sample_does_not_hold_the_others():
    """Sample 0's first segment is generated only after sample 1 has searched and answered: the batch loop would
    wait for it in every round."""
    released = asyncio.Event
    scripts = [[ANSWER], [Q.format("alpha"), ANSWER]]

    class Slow(AsyncScripted):
        async def generate(self, prompt_ids: list[int], params: GenParams) -> GenOut:
            if prompt_ids[0] == 0:
                await self.gate.wait()
            return await super().generate(prompt_ids, params)

    async def main() -> list[Sample]:
        engine = Slow(scripts)
        engine.gate = released()
        samples = [Sample([0]), Sample([1])]
        batcher = SearchBatcher(search, 8)

        async def release_when_one_is_done() -> None:
            while not samples[1].done:
                await asyncio.sleep(0)
            engine.gate.set()

        waiter = asyncio.create_task(release_when_one_is_done())
        await run_samples(engine, batcher, tokenize, R1_SEARCHER, samples, DEFAULT_LIMITS, GenerationGate())
        await waiter
        return samples

    a, b = asyncio.run(main())
    assert (a.finish_reason, b.finish_reason, b.num_searches) == ("eos", "eos", 1)


def test_waiting_queries_coalesce_into_one_call():
    first_call_may_return = threading.Event()
    calls: list[list[str]] = []

    def blocking_search(queries: list[str], k: int) -> list[list[Document]]:
        calls.append(list(queries))
        if len(calls) == 1:
            first_call_may_return.wait(30)
        return search(queries, k)

    async def main() -> list[list[Document]]:
        b = SearchBatcher(blocking_search, 8)
        first = asyncio.create_task(b.search("a", 1))
        while not calls:  # the first call is running on its thread
            await asyncio.sleep(0.001)
        rest = [asyncio.create_task(b.search(q, 1)) for q in ("b", "c")]
        await asyncio.sleep(0)
        first_call_may_return.set()
        return [await t for t in (first, *rest)]

    docs = asyncio.run(main())
    assert calls == [["a"], ["b", "c"]]
    assert [d[0].text for d in docs] == ["doc-a-0", "doc-b-0", "doc-c-0"]


def test_a_failed_search_call_costs_only_its_samples():
    def failing(queries: list[str], k: int) -> list[list[Document]]:
        if "q0" in queries:
            raise RuntimeError("retriever rejected the request")
        return search(queries, k)

    scripts = [[Q.format(f"q{i}"), ANSWER] for i in range(3)]
    limits = LoopLimits(top_k=1, max_searches=2, max_search_batch=2)
    samples, batcher, _, timings, _ = run_async(R1_SEARCHER, scripts, limits, failing)
    failed_call = next(c for c in batcher.calls if "q0" in c)
    assert [s.search_failures for s in samples] == [int(f"q{i}" in failed_call) for i in range(3)]
    assert [str(e) for e in timings.search_errors] == ["retriever rejected the request"] * len(failed_call)
    empty = R1_SEARCHER.format_documents([])
    assert all((s.finish_reason, s.num_searches) == ("eos", 1) for s in samples)
    assert all(empty in "".join(map(chr, s.response_ids)) for s in samples if s.search_failures)


def test_a_failing_sample_cancels_its_siblings_and_raises():
    class Failing(AsyncScripted):
        async def generate(self, prompt_ids: list[int], params: GenParams) -> GenOut:
            if prompt_ids[0] == 1:
                raise RuntimeError("engine failed on this prompt")
            await asyncio.sleep(3600)  # never ends by itself
            raise AssertionError

    async def main() -> None:
        with pytest.raises(RuntimeError, match="engine failed"):
            await run_samples(
                Failing([[], []]),
                SearchBatcher(search, 8),
                tokenize,
                R1_SEARCHER,
                [Sample([0]), Sample([1])],
                DEFAULT_LIMITS,
                GenerationGate(),
            )
        assert len(asyncio.all_tasks()) == 1  # only main(): the sibling was cancelled

    asyncio.run(main())


def test_pause_waits_for_segments_in_flight_and_holds_new_ones_back():
    events: list[str] = []

    class Logged(AsyncScripted):
        async def generate(self, prompt_ids: list[int], params: GenParams) -> GenOut:
            events.append(f"start {prompt_ids[0]}")
            await asyncio.sleep(0.01)
            events.append(f"end {prompt_ids[0]}")
            return GenOut([], [], "", "stop", None)

    async def main() -> list[int]:
        version = [0]
        gate = GenerationGate(lambda: version[0])
        engine = Logged([[], []])
        first = asyncio.create_task(gate.generate(engine, [0], GenParams(1, 0.0, 1.0)))
        await asyncio.sleep(0)
        await gate.pause()
        events.append("paused")
        second = asyncio.create_task(gate.generate(engine, [1], GenParams(1, 0.0, 1.0)))
        await asyncio.sleep(0.02)
        version[0] = 1  # weights reloaded while paused
        events.append("resume")
        gate.resume()
        return [(await first)[1], (await second)[1]]

    assert asyncio.run(main()) == [0, 1]
    assert events == ["start 0", "end 0", "paused", "resume", "start 1", "end 1"]

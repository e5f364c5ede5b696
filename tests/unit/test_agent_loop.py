"""The agent server's one-question loop (searchrl/agent/loop.py) with scripted engines: for every protocol it
builds exactly the response the rollout search loop builds from the same segments, and its events tell the
story (streamed text, each segment, each search with its passages, the answer)."""

from __future__ import annotations

import asyncio

import pytest

from searchrl.agent.loop import run_agent
from searchrl.protocol import R1_SEARCHER, RESEARCH, SEARCH_R1, Document
from searchrl_rollout.async_engine import Delta
from searchrl_rollout.engine import GenParams
from searchrl_rollout.search_loop import LoopLimits, Sample, run_search_loop
from tests.unit.test_search_loop import ScriptedEngine, tokenize


class ScriptedStreamEngine:
    """Streams scripted segments 3 characters (tokens) per delta, cut like ScriptedEngine cuts them."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.params: list[GenParams] = []

    async def stream(self, prompt_ids: list[int], params: GenParams):  # noqa: ANN201
        self.params.append(params)
        [out] = ScriptedEngine([self.script]).generate([[0]], [params])  # pops the segment
        for i in range(0, len(out.text), 3):
            chunk = out.text[i : i + 3]
            last = i + 3 >= len(out.text)
            yield Delta(
                [ord(c) for c in chunk],
                chunk,
                [-0.1] * len(chunk),
                out.finish_reason if last else None,
                out.stop_string if last else None,
            )


def search(queries: list[str], k: int) -> list[list[Document]]:
    return [[Document(f"T{i}", f"doc-{q}-{i}") for i in range(k)] for q in queries]


def decode(ids: list[int]) -> str:
    return "".join(chr(t) for t in ids)


LIMITS = LoopLimits(top_k=2, max_searches=2, segment_tokens=200, max_response_tokens=2000, max_turns=2)
Q = R1_SEARCHER
CASES = {
    "r1searcher": (
        R1_SEARCHER,
        [
            f" hm {Q.query_open} alpha {Q.query_close}",
            f" more {Q.query_open} beta {Q.query_close}",
            f" then {Q.query_open} gamma {Q.query_close}",  # the third search: max_searches ends it
        ],
    ),
    "r1searcher-empty-query": (R1_SEARCHER, [f" hm {Q.query_open}  {Q.query_close}"]),
    "research": (
        RESEARCH,
        ["<think> x </think> <search> alpha </search>", " <answer> \\boxed{A} </answer>"],
    ),
    "research-empty-query": (RESEARCH, ["<search> </search>", " <answer> \\boxed{B} </answer>"]),
    "search-r1": (
        SEARCH_R1,
        ["<think> hm </think> no action.", "<search> alpha </search>", "<answer> A </answer>"],
    ),
    "search-r1-last-turn": (
        SEARCH_R1,
        ["<search> a </search>", "<search> b </search>", "<search> c </search>"],
    ),
}


def run_agent_events(protocol, script, limits=LIMITS, search_fn=search):  # noqa: ANN001, ANN201
    sample = Sample([0])

    async def go() -> list[dict]:
        return [
            e
            async for e in run_agent(
                ScriptedStreamEngine(script), search_fn, tokenize, decode, protocol, sample, limits
            )
        ]

    return sample, asyncio.run(go())


@pytest.mark.parametrize("case", list(CASES))
def test_the_agent_builds_the_rollout_loops_response(case):
    protocol, script = CASES[case]
    batch = Sample([0])
    run_search_loop(ScriptedEngine([list(script)]), search, tokenize, protocol, [batch], LIMITS)
    agent, events = run_agent_events(protocol, script)
    assert agent.response_ids == batch.response_ids
    assert agent.loss_mask == batch.loss_mask
    assert (agent.finish_reason, agent.num_searches, agent.turns) == (
        batch.finish_reason,
        batch.num_searches,
        batch.turns,
    )
    assert agent.queries == batch.queries
    assert events[-1]["type"] == "answer" and events[-1]["finish_reason"] == batch.finish_reason
    assert events[-1]["response"] == decode(batch.response_ids)


def test_events_carry_the_streamed_text_segments_searches_and_answer():
    _, events = run_agent_events(*CASES["research"])
    kinds = [e["type"] for e in events]
    assert kinds[0] == "token" and kinds[-1] == "answer"
    segments = [e for e in events if e["type"] == "segment"]
    assert [s["text"] for s in segments] == CASES["research"][1]
    # the tokens of each segment arrive before it, and add up to it
    streamed, i = [], 0
    for e in events:
        if e["type"] == "token":
            streamed.append(e["text"])
        elif e["type"] == "segment":
            assert "".join(streamed) == segments[i]["text"]
            streamed, i = [], i + 1
    [found] = [e for e in events if e["type"] == "search"]
    assert found["query"] == "alpha" and found["error"] is None
    assert found["passages"] == [{"title": f"T{i}", "text": f"doc-alpha-{i}"} for i in range(2)]
    assert found["inserted"] == RESEARCH.format_documents(search(["alpha"], 2)[0])
    answer = events[-1]
    assert answer["answer"] == "A" and answer["searches"] == 1
    assert set(answer["timings"]) == {"generate_s", "retrieve_s", "total_s"}
    assert all(s["seconds"] >= 0 for s in segments)


def test_the_corrective_message_is_an_event():
    _, events = run_agent_events(*CASES["search-r1"])
    [inserted] = [e for e in events if e["type"] == "inserted"]
    assert inserted["text"] == SEARCH_R1.invalid_action


def test_a_failed_search_gets_empty_documents_and_the_loop_goes_on():
    def broken(queries, k):  # noqa: ANN001, ANN202
        raise ConnectionError("retriever down")

    batch = Sample([0])
    protocol, script = CASES["research"]
    run_search_loop(ScriptedEngine([list(script)]), broken, tokenize, protocol, [batch], LIMITS)
    agent, events = run_agent_events(protocol, script, search_fn=broken)
    assert agent.response_ids == batch.response_ids and agent.search_failures == 1
    [found] = [e for e in events if e["type"] == "search"]
    assert found["passages"] == [] and "ConnectionError: retriever down" in found["error"]
    assert events[-1]["answer"] == "A"


def test_segments_are_sampled_as_the_limits_say():
    engine = ScriptedStreamEngine(CASES["research"][1])
    sample = Sample([0], seed=5)
    limits = LoopLimits(top_k=2, segment_tokens=60, max_response_tokens=2000, temperature=0.0, top_p=1.0)

    async def go() -> None:
        async for _ in run_agent(engine, search, tokenize, decode, RESEARCH, sample, limits):
            pass

    asyncio.run(go())
    first = engine.params[0]
    assert (first.max_tokens, first.temperature, first.top_p, first.stop) == (60, 0.0, 1.0, RESEARCH.stop)
    assert [p.seed for p in engine.params] == [5 + 7919, 5 + 2 * 7919]  # the batch loop's per-round seeds

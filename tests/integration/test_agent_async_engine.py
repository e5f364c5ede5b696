"""services/rollout/async_engine.py on real vLLM with the tiny searcher: the async engine gives the offline
engine's `GenOut`, streams deltas that join to it, serves concurrent requests, aborts a closed stream and
reloads weights in place. The engine lives on one event loop, run here on its own thread."""

from __future__ import annotations

import asyncio

import pytest
from transformers import AutoTokenizer

from searchrl.config import RolloutConfig
from searchrl.loopthread import LoopThread
from searchrl.models import resolve_model
from searchrl.protocol import R1_SEARCHER
from searchrl_rollout.async_engine import AsyncVllmEngine, Delta, join_deltas
from searchrl_rollout.engine import GenParams, VllmEngine
from searchrl_rollout.search_loop import build_prompt_ids
from searchrl_trainer.data import load_qa
from tests.conftest import ROOT

RC = RolloutConfig(max_model_len=1024)
QUESTIONS = [it.question for it in load_qa(str(ROOT / "data/tiny/train.jsonl"))[:8]]
GREEDY = GenParams(48, 0.0, 1.0, R1_SEARCHER.stop)


@pytest.fixture(scope="module")
def model_path() -> str:
    return resolve_model("builtin:tiny-searcher")


@pytest.fixture(scope="module")
def prompts(model_path) -> list[list[int]]:
    tok = AutoTokenizer.from_pretrained(model_path)
    return [build_prompt_ids(tok, R1_SEARCHER, q, chat_template=True) for q in QUESTIONS]


@pytest.fixture(scope="module")
def engine(model_path):
    loop = LoopThread()

    async def start() -> AsyncVllmEngine:
        return AsyncVllmEngine.from_config(model_path, RC, seed=0)

    eng = loop.run(start())
    yield loop, eng
    eng.shutdown()
    loop.loop.call_soon_threadsafe(loop.loop.stop)


def test_generate_matches_the_offline_engine(engine, model_path, prompts):
    loop, eng = engine
    offline = VllmEngine.from_config(model_path, RC, seed=0)
    params = [GREEDY, GenParams(5, 0.0, 1.0, R1_SEARCHER.stop), GREEDY]
    want = offline.generate(prompts[:3], params)
    got = [loop.run(eng.generate(p, gp)) for p, gp in zip(prompts[:3], params, strict=True)]
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert [g.text for g in got] == [w.text for w in want]
    assert [(g.finish_reason, g.stop_string) for g in got] == [(w.finish_reason, w.stop_string) for w in want]
    assert got[1].finish_reason == "length" and len(got[1].token_ids) == 5
    for g, w in zip(got, want, strict=True):
        assert len(g.logprobs) == len(g.token_ids)
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-3)


def test_the_searcher_stops_at_the_query_tag(engine, prompts):
    loop, eng = engine
    out = loop.run(eng.generate(prompts[0], GREEDY))
    assert out.stop_string == "<|end_of_query|>" and out.finish_reason == "stop"
    assert out.text.endswith("<|end_of_query|>") and R1_SEARCHER.extract_query(out.text)


def test_stream_deltas_join_to_the_generated_output(engine, prompts):
    loop, eng = engine

    async def collect() -> list[Delta]:
        return [d async for d in eng.stream(prompts[1], GREEDY)]

    deltas = loop.run(collect())
    assert all(d.finish_reason is None for d in deltas[:-1]) and deltas[-1].finish_reason
    assert all(len(d.logprobs) == len(d.token_ids) for d in deltas)
    joined = join_deltas(deltas)
    whole = loop.run(eng.generate(prompts[1], GREEDY))
    assert (joined.token_ids, joined.text, joined.stop_string) == (
        whole.token_ids,
        whole.text,
        whole.stop_string,
    )


def test_concurrent_requests_get_their_own_answers(engine, prompts):
    loop, eng = engine
    params = [GenParams(4 + 3 * i, 0.0, 1.0, []) for i in range(len(prompts))]  # each its own length
    alone = [loop.run(eng.generate(p, gp)).token_ids for p, gp in zip(prompts, params, strict=True)]

    async def together() -> list[list[int]]:
        outs = await asyncio.gather(*(eng.generate(p, gp) for p, gp in zip(prompts, params, strict=True)))
        return [o.token_ids for o in outs]

    assert loop.run(together()) == alone
    assert len({len(a) for a in alone}) == len(prompts)


def test_closing_a_stream_aborts_its_request(engine, prompts):
    loop, eng = engine

    async def first_delta_then_close() -> tuple[Delta, int]:
        stream = eng.stream(prompts[2], GenParams(200, 1.0, 1.0, []))
        first = await anext(stream)
        held = eng.unfinished()
        await stream.aclose()
        return first, held

    first, held = loop.run(first_delta_then_close())
    assert first.finish_reason is None and held == 1
    assert eng.unfinished() == 0


def test_load_weights_reloads_in_place(engine, model_path, prompts):
    loop, eng = engine
    before = loop.run(eng.generate(prompts[3], GREEDY))
    loop.run(eng.load_weights(model_path))
    assert loop.run(eng.generate(prompts[3], GREEDY)).token_ids == before.token_ids

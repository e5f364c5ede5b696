"""At temperature 0 the per-sample async loop on vLLM's AsyncLLM gives the batch loop's exact samples (token ids,
masks, log-probs within float noise, ends, searches) on the offline engine, for every protocol: its tiny searcher
(`builtin:tiny-searcher[-research|-search-r1]`), a real retriever gRPC server, real engines (starts vLLM twice per
protocol; ~4 min on 2 CPU cores)."""

from __future__ import annotations

import gc

import pytest
from transformers import AutoTokenizer

from searchrl.config import RolloutConfig
from searchrl.grpcutil import channel
from searchrl.loopthread import LoopThread
from searchrl.models import resolve_model
from searchrl.proto import retriever_pb2_grpc
from searchrl.protocol import R1_SEARCHER, RESEARCH, SEARCH_R1
from searchrl_rollout.async_engine import AsyncVllmEngine
from searchrl_rollout.async_loop import GenerationGate, SearchBatcher, run_samples
from searchrl_rollout.engine import VllmEngine
from searchrl_rollout.search_loop import LoopLimits, Sample, build_prompt_ids, run_search_loop
from searchrl_rollout.server import grpc_search
from searchrl_trainer.data import load_qa
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # heavy (several engines or ranks): `make test-slow` (CI runs it)

RC = RolloutConfig(max_model_len=2048)
QUESTIONS = [it.question for it in load_qa(str(ROOT / "data/tiny/train.jsonl"))[:6]]


MODELS = {
    R1_SEARCHER.name: "builtin:tiny-searcher",
    RESEARCH.name: "builtin:tiny-searcher-research",
    SEARCH_R1.name: "builtin:tiny-searcher-search-r1",
}


@pytest.fixture(scope="module", params=[R1_SEARCHER, RESEARCH, SEARCH_R1], ids=lambda p: p.name)
def engines(request):
    path = resolve_model(MODELS[request.param.name])
    loop = LoopThread()
    run = loop.run

    async def start() -> AsyncVllmEngine:
        return AsyncVllmEngine.from_config(path, RC, seed=0)

    async_engine = run(start())
    offline = VllmEngine.from_config(path, RC, seed=0)
    yield request.param, AutoTokenizer.from_pretrained(path), offline, async_engine, run
    async_engine.shutdown()
    del offline  # the offline engine core stops when collected: the next protocol's engines get its memory
    gc.collect()
    loop.stop()


def test_async_and_batch_loops_give_the_same_tokens_at_temperature_0(engines, retriever_and_reward):
    protocol, tok, offline, async_engine, run = engines
    cfg = retriever_and_reward
    search = grpc_search(retriever_pb2_grpc.RetrieverStub(channel(cfg.addresses.retriever, cfg.security)))
    limits = LoopLimits.from_budgets(
        protocol.defaults, temperature=0.0, top_p=1.0, segment_tokens=96, max_response_tokens=384
    )

    def tokenize(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    def samples() -> list[Sample]:
        return [Sample(build_prompt_ids(tok, protocol, q, chat_template=True)) for q in QUESTIONS]

    want = samples()
    run_search_loop(offline, search, tokenize, protocol, want, limits)
    got = samples()
    batcher = SearchBatcher(search, limits.max_search_batch)

    async def rollout() -> None:
        await run_samples(async_engine, batcher, tokenize, protocol, got, limits, GenerationGate())

    run(rollout())
    assert [s.response_ids for s in got] == [s.response_ids for s in want]
    assert [s.loss_mask for s in got] == [s.loss_mask for s in want]
    assert [(s.finish_reason, s.num_searches, s.turns, s.queries) for s in got] == [
        (s.finish_reason, s.num_searches, s.turns, s.queries) for s in want
    ]
    for g, w in zip(got, want, strict=True):
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-3)
    assert sum(s.num_searches for s in got) > 0  # the searcher searched: the rules were exercised

"""Rollout throughput: the per-sample async search loop against plain generation and the batch-synchronous loop.

All three run on ONE vLLM AsyncLLM engine, with the same workload: `--samples` prompts of the tiny world, each
with a plan drawn from long-tailed distributions (seeded): a number of searches (geometric, capped) and the
length of every segment (log-normal, capped). The model's tokens are real (sampled with `ignore_eos`, so each
segment has its planned length); only the decisions are scripted: after a planned segment the engine wrapper
appends a query for the sample's question (searched for real: `--search service` runs the retriever service in its
own process, as workers reach it; documents inserted by the search loop) or, after the last, an answer. So the three modes generate exactly the same number of tokens:
- plain: one request per sample of all its planned tokens, all at once (the engine's best case);
- async: services/rollout/async_loop.run_samples over every sample (what AsyncRolloutWorker runs);
- sync: search_loop.run_search_loop over every sample in one batch (today's RolloutWorker, in its most favourable
  batch: everything at once), each round one `gather` of the active samples' segments on the same engine.
Reports generated tokens/s per mode and the ratios async/plain (goal >= 0.8) and async/sync (goal >= 1.5), as
JSON on stdout and in --out. The modes alternate over --repeats rounds; the median is reported.

    python bench/rollout_throughput.py --repeats 3 --out bench/results/rollout-throughput-cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass

import numpy as np

_REQUESTS = itertools.count()


@dataclass
class Plan:
    question: str
    segments: list[int]  # planned model tokens of each segment; a search follows each but the last


def draw_plans(
    questions: list[str], n: int, seed: int, p: float, max_searches: int, median: int, cap: int
) -> list[Plan]:
    """Searches ~ geometric(p) - 1 capped at `max_searches`; segment lengths ~ log-normal(median, sigma 1)
    capped at `cap`: most samples short, a few long (the tail that stalls a batch-synchronous round)."""
    rng = np.random.default_rng(seed)
    plans = []
    for i in range(n):
        searches = min(int(rng.geometric(p)) - 1, max_searches)
        lengths = np.clip(rng.lognormal(np.log(median), 1.0, searches + 1), 4, cap).astype(int)
        plans.append(Plan(questions[i % len(questions)], [int(x) for x in lengths]))
    return plans


class PlannedEngine:
    """Real sampling of the planned number of tokens per segment, then the scripted decision (query or answer)
    appended as text; samples are told apart by their prompt (distinct per sample)."""

    def __init__(self, engine, plans: dict[tuple[int, ...], Plan], tokenize, protocol) -> None:  # noqa: ANN001
        self.engine, self.plans, self.tokenize, self.protocol = engine, plans, tokenize, protocol
        self.prompt_len = {len(k) for k in plans}
        self.segment: dict[tuple[int, ...], int] = {}
        self.generated = 0

    def _plan(self, prompt_ids: list[int]) -> tuple[tuple[int, ...], Plan]:
        for n in self.prompt_len:
            key = tuple(prompt_ids[:n])
            if key in self.plans:
                return key, self.plans[key]
        raise KeyError("prompt of no plan")

    async def generate(self, prompt_ids: list[int], params):  # noqa: ANN001, ANN201
        from searchrl_rollout.engine import GenOut

        key, plan = self._plan(prompt_ids)
        j = self.segment.get(key, 0)
        self.segment[key] = j + 1
        ids, lps = await forced_tokens(self.engine, prompt_ids, min(plan.segments[j], params.max_tokens))
        self.generated += len(ids)
        p = self.protocol
        last = j == len(plan.segments) - 1
        tail = (
            p.answer_open + " x " + p.answer_close
            if last
            else f" {p.query_open} {plan.question} {p.query_close}"
        )
        tail_ids = self.tokenize(tail)
        return GenOut(
            ids + tail_ids, lps + [0.0] * len(tail_ids), tail, "stop", None if last else p.query_close
        )

    async def load_weights(self, directory: str) -> None:
        raise NotImplementedError


async def forced_tokens(engine, prompt_ids: list[int], n: int) -> tuple[list[int], list[float]]:  # noqa: ANN001
    """`n` sampled tokens (EOS ignored) with their log-probs, on the AsyncVllmEngine `engine`."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from searchrl_rollout.engine import token_logprobs

    sp = SamplingParams(max_tokens=n, temperature=1.0, ignore_eos=True, logprobs=0)
    final = None
    async for out in engine.llm.generate(
        TokensPrompt(prompt_token_ids=list(prompt_ids)), sp, f"bench-{next(_REQUESTS)}"
    ):
        final = out
    c = final.outputs[0]
    ids = list(c.token_ids)
    return ids, token_logprobs(c.logprobs, ids)


async def run_plain(engine, prompts: list[list[int]], plans: list[Plan]) -> int:  # noqa: ANN001
    outs = await asyncio.gather(
        *(forced_tokens(engine, p, sum(pl.segments)) for p, pl in zip(prompts, plans, strict=True))
    )
    return sum(len(ids) for ids, _ in outs)


class BatchOverAsync:
    """The batch loop's `Engine` on the async engine: one round = every active sample's segment, awaited together
    (called from a worker thread; the engine's event loop runs the requests)."""

    def __init__(self, planned: PlannedEngine, loop: asyncio.AbstractEventLoop) -> None:
        self.planned, self.loop = planned, loop

    def generate(self, prompts, params):  # noqa: ANN001, ANN201
        async def round_() -> list:
            return await asyncio.gather(
                *(self.planned.generate(p, gp) for p, gp in zip(prompts, params, strict=True))
            )

        return asyncio.run_coroutine_threadsafe(round_(), self.loop).result()

    def load_weights(self, directory: str) -> None:
        raise NotImplementedError


def retriever_service(config: str):  # noqa: ANN201
    """`searchrl serve retriever` in its own process on a free loopback port, as the worker reaches it; returns
    (search function over gRPC, stop)."""
    import subprocess
    import sys

    from searchrl.config import load_config
    from searchrl.grpcutil import channel, wait_serving
    from searchrl.proto import retriever_pb2_grpc
    from searchrl.redisio import free_port
    from searchrl_rollout.server import grpc_search

    port = free_port()
    cmd = [sys.executable, "-m", "searchrl.cli", "serve", "retriever", "-c", config]
    cmd += ["--set", f"retriever.port={port}", "--set", "retriever.metrics_port=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    security = load_config(config).security
    wait_serving([f"127.0.0.1:{port}"], security, 600, alive=lambda: proc.poll() is None)
    stub = retriever_pb2_grpc.RetrieverStub(channel(f"127.0.0.1:{port}", security))

    def stop() -> None:
        proc.terminate()
        proc.wait(60)

    return grpc_search(stub), stop


async def bench(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer

    from searchrl.config import load_config
    from searchrl.models import resolve_model
    from searchrl.protocol import Document, get_protocol
    from searchrl_retriever.service import open_retriever
    from searchrl_rollout.async_engine import AsyncVllmEngine
    from searchrl_rollout.async_loop import GenerationGate, SearchBatcher, run_samples
    from searchrl_rollout.search_loop import LoopLimits, Sample, build_prompt_ids, run_search_loop
    from searchrl_trainer.data import load_qa

    cfg = load_config(args.config)
    cfg.rollout.max_model_len = args.max_model_len
    protocol = get_protocol("r1searcher")
    path = resolve_model(args.model, cfg.model.cache_dir, 0)
    tok = AutoTokenizer.from_pretrained(path)
    engine = AsyncVllmEngine.from_config(path, cfg.rollout, 0)
    search_s = [0.0]
    if args.search == "service":
        grpc_fn, stop_service = retriever_service(args.config)
    elif args.search == "retriever":
        retriever = open_retriever(cfg, progress=False)
    search_share: dict[str, list[float]] = {"async": [], "sync": []}

    def search(queries: list[str], k: int) -> list[list[Document]]:
        t0 = time.perf_counter()
        if args.search == "fixed":  # the same passages for every query: no retrieval CPU on the box
            rows = [[Document("Tirabel", "Orlen Vask was born in Tirabel.")] * k for _ in queries]
        elif args.search == "service":
            rows = grpc_fn(queries, k)
        else:
            rows = [[Document(p.title, p.text) for p, _ in row] for row in retriever.search(queries, k)]
        search_s[0] += time.perf_counter() - t0
        return rows

    def tokenize(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    questions = [it.question for it in load_qa(cfg.trainer.stages[0].data)]
    plans = draw_plans(
        questions,
        args.samples,
        args.seed,
        args.search_p,
        args.max_searches,
        args.median_tokens,
        args.cap_tokens,
    )
    # a distinct prompt per sample (the question and its sample number), so the wrapper can tell them apart
    prompts = [build_prompt_ids(tok, protocol, f"{p.question} (#{i})", True) for i, p in enumerate(plans)]
    limits = LoopLimits.from_budgets(
        protocol.defaults,
        top_k=2,
        max_searches=None,
        segment_tokens=args.cap_tokens,
        max_response_tokens=1 << 20,
    )
    planned_tokens = sum(sum(p.segments) for p in plans)

    async def once(mode: str) -> float:
        search_s[0] = 0.0
        planned = PlannedEngine(
            engine, {tuple(p): pl for p, pl in zip(prompts, plans, strict=True)}, tokenize, protocol
        )
        samples = [Sample(list(p)) for p in prompts]
        t0 = time.perf_counter()
        if mode == "plain":
            generated = await run_plain(engine, prompts, plans)
        elif mode == "async":
            batcher = SearchBatcher(search, cfg.retriever.max_batch)
            await run_samples(planned, batcher, tokenize, protocol, samples, limits, GenerationGate())
            generated = planned.generated
        else:
            batch = BatchOverAsync(planned, asyncio.get_running_loop())
            await asyncio.to_thread(run_search_loop, batch, search, tokenize, protocol, samples, limits)
            generated = planned.generated
        dt = time.perf_counter() - t0
        assert generated == planned_tokens, (mode, generated, planned_tokens)
        if mode != "plain":
            search_share[mode].append(search_s[0] / dt)
        return generated / dt

    await once("async")  # warm-up: compile, prefix cache of the instructions, retriever
    search_share["async"].clear()
    rates: dict[str, list[float]] = {"plain": [], "async": [], "sync": []}
    for _ in range(args.repeats):
        for mode in rates:
            rates[mode].append(await once(mode))
            print(f"{mode}: {rates[mode][-1]:.0f} tokens/s", flush=True)
    engine.shutdown()
    if args.search == "service":
        stop_service()
    med = {m: statistics.median(v) for m, v in rates.items()}
    return {
        "bench": "rollout_throughput",
        "model": args.model,
        "samples": args.samples,
        "planned_tokens": planned_tokens,
        "searches": sum(len(p.segments) - 1 for p in plans),
        "segment_lengths": {
            "median": float(np.median([x for p in plans for x in p.segments])),
            "p95": float(np.percentile([x for p in plans for x in p.segments], 95)),
            "max": max(x for p in plans for x in p.segments),
        },
        "tokens_per_s": {m: round(v, 1) for m, v in med.items()},
        "runs": {m: [round(x, 1) for x in v] for m, v in rates.items()},
        "search": args.search,
        "search_seconds_per_wall_second": {
            m: round(statistics.median(v), 3) for m, v in search_share.items()
        },
        "async_over_plain": round(med["async"] / med["plain"], 3),
        "async_over_sync": round(med["async"] / med["sync"], 3),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_avg_before": args.load_before,
        "load_avg_after": list(os.getloadavg()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--model", default="builtin:tiny-searcher")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--max-searches", type=int, default=8, help="R1-Searcher's limit")
    ap.add_argument("--search-p", type=float, default=0.35, help="searches ~ geometric(p) - 1")
    ap.add_argument("--median-tokens", type=int, default=32)
    ap.add_argument("--cap-tokens", type=int, default=384)
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--search",
        choices=["service", "retriever", "fixed"],
        default="service",
        help="service: `searchrl serve retriever` in its own process over gRPC (as the worker searches); "
        "retriever: the index in this process; fixed: the same passages for every query (isolates scheduling "
        "from the retrieval CPU that a 2-core box shares with the engine)",
    )
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    args.load_before = list(os.getloadavg())
    result = asyncio.run(bench(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

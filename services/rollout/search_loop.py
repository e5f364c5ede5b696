"""The search loop (R1-Searcher): generate until the query-closing tag, search, insert documents, continue.

Contract of `run_search_loop(engine, search, tokenize, protocol, samples, limits)`:
- every round generates one segment for all active samples in ONE engine call, then answers the pending queries
  of the round with `search(queries, top_k)` calls of at most `max_search_batch` queries each, every query cut to
  `max_query_chars` (the retriever's limits: a longer query or batch would fail the whole call);
- a search call that raises costs only its own samples: they get an empty documents block and count the failure
  (`Sample.search_failures`, `LoopTimings.search_errors`); the loop goes on;
- a sample ends on EOS, on a segment that hits `segment_tokens` without a query, on an empty query, at
  `max_searches` retrievals (a further query ends the rollout), or when the response budget is spent;
- per sample it records the response token ids, a loss mask that is 0 exactly on inserted document tokens (the
  model's own query-closing tag stays 1), the behaviour log-probs of sampled tokens (0 under mask 0), and the
  number of searches. Inserted documents are cut to the remaining budget.
This module does no I/O of its own: the engine, the search function and the tokenizer are passed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from searchrl.config import RetrieverConfig, RolloutConfig
from searchrl.protocol import Example, Protocol
from searchrl_rollout.engine import Engine, GenParams

SearchFn = Callable[[list[str], int], list[list[str]]]
TokenizeFn = Callable[[str], list[int]]


@dataclass(frozen=True)
class LoopLimits:
    top_k: int = 3
    max_searches: int = 8
    segment_tokens: int = 512
    max_response_tokens: int = 2048
    temperature: float = 1.0
    top_p: float = 0.95
    max_query_chars: int = 2048
    max_search_batch: int = 512

    @staticmethod
    def from_config(rc: RolloutConfig, retriever: RetrieverConfig | None = None) -> LoopLimits:
        """The rollout's limits; the query limits are `retriever`'s (the defaults' when None)."""
        ret = retriever or RetrieverConfig()
        return LoopLimits(
            rc.top_k,
            rc.max_searches,
            rc.segment_tokens,
            rc.max_response_tokens,
            rc.temperature,
            rc.top_p,
            ret.max_query_chars,
            ret.max_batch,
        )


@dataclass
class Sample:
    prompt_ids: list[int]
    seed: int | None = None
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    num_searches: int = 0
    search_failures: int = 0
    finish_reason: str = ""
    queries: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return bool(self.finish_reason)


@dataclass
class LoopTimings:
    generate_s: float = 0.0
    retrieve_s: float = 0.0
    rounds: int = 0
    search_calls: int = 0
    search_errors: list[Exception] = field(default_factory=list)


def _append(sample: Sample, ids: list[int], mask: int, logprobs: list[float] | None = None) -> None:
    sample.response_ids.extend(ids)
    sample.loss_mask.extend([mask] * len(ids))
    sample.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))


def run_search_loop(
    engine: Engine,
    search: SearchFn,
    tokenize: TokenizeFn,
    protocol: Protocol,
    samples: list[Sample],
    limits: LoopLimits,
) -> LoopTimings:
    timings = LoopTimings()
    active = [s for s in samples if not s.done]
    while active:
        timings.rounds += 1
        params = []
        for s in active:
            budget = limits.max_response_tokens - len(s.response_ids)
            seed = None if s.seed is None else s.seed + 7919 * timings.rounds
            params.append(
                GenParams(
                    min(limits.segment_tokens, budget), limits.temperature, limits.top_p, protocol.stop, seed
                )
            )
        t0 = time.perf_counter()
        outs = engine.generate([s.prompt_ids + s.response_ids for s in active], params)
        timings.generate_s += time.perf_counter() - t0

        pending: list[tuple[Sample, str]] = []
        for s, out in zip(active, outs, strict=True):
            lps = out.logprobs if len(out.logprobs) == len(out.token_ids) else [0.0] * len(out.token_ids)
            _append(s, out.token_ids, 1, lps)
            if out.stop_string == protocol.query_close:
                query = protocol.extract_query(out.text)
                if not query:
                    s.finish_reason = "empty_query"  # R1-Searcher: an empty query ends the rollout
                elif s.num_searches >= limits.max_searches:
                    s.finish_reason = "max_searches"
                elif len(s.response_ids) >= limits.max_response_tokens:
                    s.finish_reason = "length"
                else:
                    pending.append((s, query[: limits.max_query_chars]))
            elif out.finish_reason == "length":
                s.finish_reason = "length"
            else:
                s.finish_reason = "eos"

        for start in range(0, len(pending), limits.max_search_batch):
            _search_and_insert(
                search, tokenize, protocol, pending[start : start + limits.max_search_batch], limits, timings
            )
        active = [s for s in samples if not s.done]
    return timings


def _search_and_insert(
    search: SearchFn,
    tokenize: TokenizeFn,
    protocol: Protocol,
    pending: list[tuple[Sample, str]],
    limits: LoopLimits,
    timings: LoopTimings,
) -> None:
    """One search call for `pending`; each sample gets its documents (an empty block if the call failed)."""
    t0 = time.perf_counter()
    timings.search_calls += 1
    try:
        docs = search([q for _, q in pending], limits.top_k)
    except Exception as e:  # noqa: BLE001 - the search function is the loop's boundary; the caller judges e
        timings.search_errors.append(e)
        docs = [[] for _ in pending]
        for s, _ in pending:
            s.search_failures += 1
    timings.retrieve_s += time.perf_counter() - t0
    for (s, query), passages in zip(pending, docs, strict=True):
        s.num_searches += 1
        s.queries.append(query)
        ids = tokenize(protocol.format_documents(passages))
        room = limits.max_response_tokens - len(s.response_ids)
        if len(ids) >= room:
            _append(s, ids[:room], 0)
            s.finish_reason = "length"
        else:
            _append(s, ids, 0)


def build_prompt_ids(
    tokenizer,
    protocol: Protocol,
    question: str,
    chat_template: bool,  # noqa: ANN001
    system_prompt: str = "",
    examples: Sequence[Example] = (),
) -> list[int]:
    """Token ids of the prompt: chat template + `<think>` for instruct models, the base template otherwise;
    `examples` are shown before the question (few-shot)."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        text = (
            tokenizer.apply_chat_template(
                protocol.messages(question, system_prompt, examples),
                tokenize=False,
                add_generation_prompt=True,
            )
            + protocol.response_prefix
        )
    else:
        text = protocol.base_prompt(question, system_prompt, examples)
    return tokenizer.encode(text, add_special_tokens=False)

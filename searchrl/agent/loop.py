"""One question answered by the search agent, as a stream of events.

`run_agent(engine, search, tokenize, decode, protocol, sample, limits)` takes ONE sample through the rollout's
search rules, round by round with the public steps of services/rollout/search_loop.py (`segment_params`,
`apply_segment`, `add_documents`), so a served answer is built exactly as a rollout or `searchrl eval` builds it;
only the generation differs: it streams from an async engine (`stream(prompt_ids, params)` of `Delta`s,
services/rollout/async_engine.py). It yields JSON-ready events, in order:
- {"type": "token", "text"}: model text as it is generated;
- {"type": "segment", "index", "text", "tokens", "seconds", "finish_reason", "stop"}: a generation segment, once
  it has ended;
- {"type": "search", "query", "passages": [{"title", "text"}], "inserted", "seconds", "error"}: a retrieval and
  the text inserted after it; a search call that raises gives empty documents, as in the rollout loop, and
  its error here;
- {"type": "inserted", "text"}: other inserted text (Search-R1's corrective message, an empty query's empty
  documents block);
- {"type": "answer", "answer", "response", "finish_reason", "searches", "turns", "timings"}: the last event;
  `answer` is what `searchrl eval` would grade (None without answer tags).
The search function is synchronous (the in-process retriever or a gRPC stub) and runs on a worker thread.
`Agent` holds what a server needs to turn a question into such a stream. This module does no other I/O.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from searchrl.evaluate import predicted_answer
from searchrl.grpcutil import InvalidArgument
from searchrl.protocol import Example
from searchrl.protocol import Protocol as SearchProtocol
from searchrl_rollout.async_engine import Delta, join_deltas
from searchrl_rollout.engine import GenParams
from searchrl_rollout.search_loop import (
    LoopLimits,
    Sample,
    SearchFn,
    TokenizeFn,
    add_documents,
    apply_segment,
    build_prompt_ids,
    segment_params,
)

Event = dict[str, Any]
DecodeFn = Callable[[list[int]], str]


class StreamingEngine(Protocol):
    def stream(self, prompt_ids: list[int], params: GenParams) -> AsyncIterator[Delta]: ...


def _inserted(s: Sample, start: int) -> list[int]:
    return [t for t, m in zip(s.response_ids[start:], s.loss_mask[start:], strict=True) if not m]


async def run_agent(
    engine: StreamingEngine,
    search: SearchFn,
    tokenize: TokenizeFn,
    decode: DecodeFn,
    protocol: SearchProtocol,
    s: Sample,
    limits: LoopLimits,
) -> AsyncIterator[Event]:
    start = time.perf_counter()
    generate_s = retrieve_s = 0.0
    while not s.done:
        params = segment_params(s, protocol, limits, s.turns + 1)
        t0 = time.perf_counter()
        deltas = []
        async for d in engine.stream(s.prompt_ids + s.response_ids, params):
            deltas.append(d)
            if d.text:
                yield {"type": "token", "text": d.text}
        out = join_deltas(deltas)
        seconds = time.perf_counter() - t0
        generate_s += seconds
        before = len(s.response_ids)
        query = apply_segment(s, out, tokenize, protocol, limits)
        yield {
            "type": "segment",
            "index": s.turns,
            "text": out.text,
            "tokens": len(out.token_ids),
            "seconds": seconds,
            "finish_reason": out.finish_reason,
            "stop": out.stop_string,
        }
        if query is None:
            if inserted := _inserted(s, before):
                yield {"type": "inserted", "text": decode(inserted)}
            continue
        t0 = time.perf_counter()
        error = None
        try:
            [passages] = await asyncio.to_thread(search, [query], limits.top_k)
        except Exception as e:  # noqa: BLE001 - as the rollout loop: empty documents, the error reported
            passages, error = [], f"{type(e).__name__}: {e}"
            s.search_failures += 1
        seconds = time.perf_counter() - t0
        retrieve_s += seconds
        before = len(s.response_ids)
        add_documents(s, query, passages, tokenize, protocol, limits)
        yield {
            "type": "search",
            "query": query,
            "passages": [{"title": p.title, "text": p.text} for p in passages],
            "inserted": decode(s.response_ids[before:]),
            "seconds": seconds,
            "error": error,
        }
    response = decode(s.response_ids)
    yield {
        "type": "answer",
        "answer": predicted_answer(protocol, response),
        "response": response,
        "finish_reason": s.finish_reason,
        "searches": s.num_searches,
        "turns": s.turns,
        "timings": {
            "generate_s": generate_s,
            "retrieve_s": retrieve_s,
            "total_s": time.perf_counter() - start,
        },
    }


@dataclass
class Agent:
    """A served agent: the engine, the search function, the tokenizer and the rollout's prompt and limits."""

    engine: StreamingEngine
    search: SearchFn
    tokenizer: Any
    protocol: SearchProtocol
    limits: LoopLimits
    max_prompt_tokens: int
    chat_template: bool = True
    system_prompt: str = ""
    examples: Sequence[Example] = ()

    def prompt_ids(self, question: str) -> list[int]:
        """The rollout prompt for `question`; InvalidArgument naming `question` when it is empty or the prompt
        exceeds `max_prompt_tokens` (rollout.max_prompt_tokens)."""
        if not question.strip():
            raise InvalidArgument("question", "is empty")
        ids = build_prompt_ids(
            self.tokenizer, self.protocol, question, self.chat_template, self.system_prompt, self.examples
        )
        if len(ids) > self.max_prompt_tokens:
            raise InvalidArgument(
                "question",
                f"the prompt has {len(ids)} tokens, more than rollout.max_prompt_tokens ({self.max_prompt_tokens})",
            )
        return ids

    def answer(self, prompt_ids: list[int], temperature: float) -> AsyncIterator[Event]:
        """The events of one answer; temperature 0 is greedy (top_p 1), else the rollout's top_p."""
        limits = replace(self.limits, temperature=temperature)
        if temperature == 0:
            limits = replace(limits, top_p=1.0)
        return run_agent(
            self.engine,
            self.search,
            lambda text: self.tokenizer.encode(text, add_special_tokens=False),
            lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False),
            self.protocol,
            Sample(prompt_ids),
            limits,
        )

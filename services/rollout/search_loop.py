"""The search loop: generate a segment, decide what follows it (search, insert, end), repeat, for a batch.

Contract of `run_search_loop(engine, search, tokenize, protocol, samples, limits)`:
- every round generates one segment for all active samples in ONE engine call (each at most `segment_tokens`
  and the budget left), stopping at the protocol's stop strings; then answers the pending queries of the round
  with `search(queries, top_k)` calls of at most `max_search_batch` queries each, every query cut to
  `max_query_chars` (the retriever's limits: a longer query or batch would fail the whole call);
- what follows a segment is `after_segment`, a pure function of the protocol, the segment and the sample's
  counts (see `searchrl/protocol.py` for the two kinds of turn rules):
  - "query" protocols: a segment that stopped at the query-closing tag is searched, unless the query is empty
    (R1-Searcher: the rollout ends; ReSearch: an empty documents block, no retriever call) or `max_searches`
    retrievals were made (the rollout ends); a segment ending on EOS or by length ends the rollout;
  - "turn" protocols (Search-R1): an answer ends the rollout; a search is run; a segment with no action gets the
    protocol's corrective message (its EOS token is dropped first: the seed decodes segments without special
    tokens); the generation after `max_turns` turns is the last, its action is not run;
- a search call that raises costs only its own samples: they get an empty documents block and count the failure
  (`Sample.search_failures`, `LoopTimings.search_errors`); the loop goes on;
- a sample also ends when the response budget is spent. Inserted text (documents, corrective messages) is cut to
  `max_obs_tokens` when set, then to the budget left;
- per sample it records the response token ids, a loss mask that is 0 exactly on the tokens the loop inserted
  (the model's own tags, the query-closing tag included, stay 1), the behaviour log-probs of sampled tokens (0
  under mask 0), the number of searches and of generation turns.
One round is, per sample, `segment_params` -> generate -> `apply_segment` -> search -> `add_documents`; these
steps are public so that a loop over one sample at a time (the agent server, searchrl/agent/) follows the same rules.
This module does no I/O of its own: the engine, the search function and the tokenizer are passed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

from searchrl.config import RetrieverConfig, RolloutConfig
from searchrl.protocol import Budgets, Document, Example, Protocol
from searchrl_rollout.engine import Engine, GenOut, GenParams

SearchFn = Callable[[list[str], int], list[list[Document]]]
TokenizeFn = Callable[[str], list[int]]


@dataclass(frozen=True)
class LoopLimits:
    top_k: int = 3
    max_searches: int | None = 8  # None: no limit
    segment_tokens: int = 512
    max_response_tokens: int = 2048
    temperature: float = 1.0
    top_p: float = 0.95
    max_query_chars: int = 2048
    max_search_batch: int = 512
    max_turns: int | None = None  # "turn" protocols: turns with search before the final one
    max_obs_tokens: int | None = None  # inserted text cut to this many tokens

    @staticmethod
    def from_budgets(budgets: Budgets, **overrides: object) -> LoopLimits:
        """A protocol's budgets as limits, with `overrides` (any field) put in place."""
        return replace(LoopLimits(**asdict(budgets)), **overrides)

    @staticmethod
    def from_config(rc: RolloutConfig, retriever: RetrieverConfig | None = None) -> LoopLimits:
        """The rollout's limits (config over the protocol's budgets); the query limits are `retriever`'s (the
        defaults' when None)."""
        ret = retriever or RetrieverConfig()
        return LoopLimits.from_budgets(
            rc.budgets(),
            temperature=rc.temperature,
            max_query_chars=ret.max_query_chars,
            max_search_batch=ret.max_batch,
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
    turns: int = 0  # generation segments so far
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


@dataclass(frozen=True)
class Next:
    """What follows a segment: search `query`, or insert `insert` (masked) and go on, or end with `end`."""

    query: str | None = None
    insert: str = ""
    end: str = ""
    drop_stop_token: bool = False  # drop the segment's last token (its EOS) before going on


def after_segment(protocol: Protocol, out: GenOut, turns: int, searches: int, limits: LoopLimits) -> Next:
    """The decision after the segment `out`, the sample's `turns`-th, with `searches` retrievals made so far."""
    if protocol.actions == "turn":
        action = protocol.parse_action(out.text)
        if action is not None and action[0] == "answer":
            return Next(end="answer")
        if limits.max_turns is not None and turns > limits.max_turns:
            return Next(end="max_turns")  # Search-R1: the final generation runs with search disabled
        if action is None:
            return Next(insert=protocol.invalid_action, drop_stop_token=_ended_on_eos(out))
        query = action[1]
    elif out.stop_string == protocol.query_close:
        query = protocol.extract_query(out.text) or ""
        if not query and protocol.empty_query_ends:
            return Next(end="empty_query")
    else:
        return Next(end="length" if out.finish_reason == "length" else "eos")
    if limits.max_searches is not None and searches >= limits.max_searches:
        return Next(end="max_searches")
    return Next(query=query)


def _ended_on_eos(out: GenOut) -> bool:
    return out.finish_reason == "stop" and out.stop_string is None and bool(out.token_ids)


def _append(sample: Sample, ids: list[int], mask: int, logprobs: list[float] | None = None) -> None:
    sample.response_ids.extend(ids)
    sample.loss_mask.extend([mask] * len(ids))
    sample.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))


def _insert(sample: Sample, ids: list[int], limits: LoopLimits) -> None:
    """Inserted text, masked: cut to max_obs_tokens, then to the budget left (which ends the rollout)."""
    if limits.max_obs_tokens is not None:
        ids = ids[: limits.max_obs_tokens]
    room = limits.max_response_tokens - len(sample.response_ids)
    _append(sample, ids[:room], 0)
    if len(ids) >= room:
        sample.finish_reason = "length"


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
        params = [segment_params(s, protocol, limits, timings.rounds) for s in active]
        t0 = time.perf_counter()
        outs = engine.generate([s.prompt_ids + s.response_ids for s in active], params)
        timings.generate_s += time.perf_counter() - t0

        pending: list[tuple[Sample, str]] = []
        for s, out in zip(active, outs, strict=True):
            query = apply_segment(s, out, tokenize, protocol, limits)
            if query is not None:
                pending.append((s, query))

        for start in range(0, len(pending), limits.max_search_batch):
            _search_and_insert(
                search, tokenize, protocol, pending[start : start + limits.max_search_batch], limits, timings
            )
        active = [s for s in samples if not s.done]
    return timings


def segment_params(s: Sample, protocol: Protocol, limits: LoopLimits, round_: int) -> GenParams:
    """Sampling of the sample's next segment (the `round_`-th of the loop, from 1): at most `segment_tokens`
    and the budget left, stopping at the protocol's stop strings, its seed moved on per round."""
    budget = limits.max_response_tokens - len(s.response_ids)
    seed = None if s.seed is None else s.seed + 7919 * round_
    return GenParams(
        min(limits.segment_tokens, budget), limits.temperature, limits.top_p, protocol.stop, seed
    )


def apply_segment(
    s: Sample, out: GenOut, tokenize: TokenizeFn, protocol: Protocol, limits: LoopLimits
) -> str | None:
    """Record the segment `out` in `s` and act on `after_segment`: end the sample, or insert the protocol's text
    (a corrective message; an empty query's empty documents block). Returns the query (cut to
    `max_query_chars`) the caller must search and answer with `add_documents`, else None."""
    s.turns += 1
    nxt = after_segment(protocol, out, s.turns, s.num_searches, limits)
    ids = out.token_ids[:-1] if nxt.drop_stop_token else out.token_ids
    lps = out.logprobs if len(out.logprobs) == len(out.token_ids) else [0.0] * len(out.token_ids)
    _append(s, ids, 1, lps[: len(ids)])
    if nxt.end:
        s.finish_reason = nxt.end
    elif len(s.response_ids) >= limits.max_response_tokens:
        s.finish_reason = "length"
    elif nxt.query:
        return nxt.query[: limits.max_query_chars]
    elif nxt.query is not None:  # an empty query: the retriever refuses those
        add_documents(s, "", [], tokenize, protocol, limits)
    else:
        _insert(s, tokenize(nxt.insert), limits)
    return None


def add_documents(
    s: Sample,
    query: str,
    passages: list[Document],
    tokenize: TokenizeFn,
    protocol: Protocol,
    limits: LoopLimits,
) -> None:
    """The documents `passages` found for `query`, inserted in the protocol's format (masked), counted."""
    s.num_searches += 1
    s.queries.append(query)
    _insert(s, tokenize(protocol.format_documents(passages)), limits)


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
        add_documents(s, query, passages, tokenize, protocol, limits)


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

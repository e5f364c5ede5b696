"""`searchrl eval`: greedy evaluation of a model on questions (any format `load_qa` reads) in five modes (the
seeds' baselines):

- `no-retrieval`: the question alone; answer inside <answer></answer> (naive generation);
- `naive-rag`: the top-k passages for the question itself placed in the prompt (standard RAG);
- `iter-retgen`, `ircot`: the multi-step retrieval baselines (searchrl/baselines.py), ending in a RAG answer;
- `search-agent`: the rollout protocol's search loop (the trained agent), with the retriever in process.

Every mode answers through the same `run_search_loop` (all but the agent without searches and with one segment of
answer budget), so decoding and answer extraction are identical. Returns per-item records and EM / CEM / F1 /
searches (and the judge's verdicts when `judge_records` ran) per question type.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from searchrl.baselines import (
    DIRECT,
    BaselineSettings,
    Gathered,
    Generate,
    SearchFn,
    ircot,
    iter_retgen,
    rag_prompt,
)
from searchrl.judge import JudgeClient, judge_prompt, parse_verdict
from searchrl.protocol import Example, Protocol
from searchrl_reward.research_rules import boxed_answer
from searchrl_reward.rules import cover_exact_match, exact_match, extract_answer, f1_score
from searchrl_rollout.engine import Engine, GenParams
from searchrl_rollout.search_loop import LoopLimits, Sample, build_prompt_ids, run_search_loop
from searchrl_trainer.data import QAItem

# `searchrl eval`'s (and the demo's) default modes; ALL_MODES adds the multi-step baselines.
MODES = ("no-retrieval", "naive-rag", "search-agent")
ALL_MODES = ("no-retrieval", "naive-rag", "iter-retgen", "ircot", "search-agent")


@dataclass
class EvalRecord:
    question: str
    golden_answers: list[str]
    type: str
    response: str
    prediction: str | None
    em: float
    cem: float
    f1: float
    num_searches: int
    # Gold answer anywhere in the model's own words (inserted documents excluded), tagged or not: credits a
    # right answer given in prose, which the tagged-answer metrics above score 0.
    cem_text: float
    judge: float | None = None  # 1.0 / 0.0: the judge's verdict (searchrl/judge.py); None when not judged
    judge_output: str | None = None  # the judge's raw reply


def spread(items: list, limit: int | None) -> list:
    """`limit` items taken evenly across the list (all when limit is None or large): files are often ordered by
    question type, so the first N would test one type only."""
    if not limit or limit >= len(items):
        return list(items)
    return [items[i * len(items) // limit] for i in range(limit)]


def predicted_answer(protocol: Protocol, response: str) -> str | None:
    """The answer in `response`: the text of its last answer tags; where the protocol boxes answers (ReSearch),
    the `\\boxed{}` content in there (the whole answer text when it has no box)."""
    pred = extract_answer(response)
    if pred is not None and "\\boxed" in protocol.answer_format:
        return boxed_answer(pred) or pred
    return pred


def _answer_prompts(
    mode: str,
    items: list[QAItem],
    protocol: Protocol,
    search: SearchFn,
    generate: Generate,
    limits: LoopLimits,
    settings: BaselineSettings,
) -> list[Gathered]:
    """(system prompt, user text) of each baseline's answer step, documents in the protocol's format, and the
    retriever calls spent to gather them."""
    questions = [it.question for it in items]
    if mode == "no-retrieval":
        return [Gathered(DIRECT, q, 0) for q in questions]
    if mode == "naive-rag":
        docs = search(questions, limits.top_k)
        return [Gathered(*rag_prompt(protocol, q, d), 1) for q, d in zip(questions, docs, strict=True)]
    if mode == "iter-retgen":
        return iter_retgen(
            protocol,
            generate,
            search,
            questions,
            limits.top_k,
            settings.iter_retgen_iterations,
            limits.max_query_chars,
        )
    return ircot(
        protocol,
        generate,
        search,
        questions,
        limits.top_k,
        settings.ircot_max_iter,
        settings.ircot_max_docs,
        limits.max_query_chars,
    )


def _generator(
    engine: Engine,
    tokenizer,  # noqa: ANN001
    protocol: Protocol,
    chat_template: bool,
    segment_tokens: int,
) -> Generate:
    """Greedy one-segment completions of (system, user) prompts: the baselines' intermediate steps."""

    def generate(prompts: list[tuple[str, str]], stop: list[str]) -> list[str]:
        ids = [build_prompt_ids(tokenizer, protocol, user, chat_template, system) for system, user in prompts]
        outs = engine.generate(ids, [GenParams(segment_tokens, 0.0, 1.0, stop)] * len(ids))
        return [o.text for o in outs]

    return generate


def evaluate(
    engine: Engine,
    tokenizer,  # noqa: ANN001
    protocol: Protocol,
    search: SearchFn,
    items: list[QAItem],
    mode: str,
    limits: LoopLimits,
    chat_template: bool = True,
    system_prompt: str = "",
    examples: Sequence[Example] = (),
    settings: BaselineSettings = BaselineSettings(),  # noqa: B008 (frozen)
) -> list[EvalRecord]:
    """Greedy answers of `items` in `mode`. The search agent is prompted exactly as rollouts are
    (`system_prompt`, `examples`: config `rollout.*`; '' = the protocol's instructions); `settings` are the
    multi-step baselines' iterations (config `eval.*`)."""
    if mode not in ALL_MODES:
        raise ValueError(f"--mode: unknown mode {mode!r} (known: {', '.join(ALL_MODES)})")
    agent = mode == "search-agent"
    if agent:
        gathered = [Gathered("", it.question, 0) for it in items]
        prompts = [
            build_prompt_ids(tokenizer, protocol, it.question, chat_template, system_prompt, examples)
            for it in items
        ]
    else:
        generate = _generator(engine, tokenizer, protocol, chat_template, limits.segment_tokens)
        gathered = _answer_prompts(mode, items, protocol, search, generate, limits, settings)
        prompts = [build_prompt_ids(tokenizer, protocol, g.user, chat_template, g.system) for g in gathered]
    samples = [Sample(ids) for ids in prompts]
    greedy = replace(limits, temperature=0.0, top_p=1.0)
    if not agent:  # the baselines answer in one segment: they have nothing to wait for
        greedy = replace(greedy, max_searches=0, max_turns=0, max_response_tokens=limits.segment_tokens)
    run_search_loop(
        engine, search, lambda t: tokenizer.encode(t, add_special_tokens=False), protocol, samples, greedy
    )
    out = []
    for it, s, g in zip(items, samples, gathered, strict=True):
        text = tokenizer.decode(s.response_ids, skip_special_tokens=False)
        pred = predicted_answer(protocol, text)
        own = tokenizer.decode(
            [t for t, m in zip(s.response_ids, s.loss_mask, strict=True) if m], skip_special_tokens=False
        )
        out.append(
            EvalRecord(
                it.question,
                it.golden_answers,
                it.type or "all",
                text,
                pred,
                exact_match(pred, it.golden_answers),
                cover_exact_match(pred, it.golden_answers),
                f1_score(pred, it.golden_answers),
                s.num_searches + g.searches,
                cover_exact_match(own, it.golden_answers),
            )
        )
    return out


def judge_records(records: list[EvalRecord], client: JudgeClient) -> None:
    """Ask `client` for R1-Searcher's True/False verdict on every record; sets `judge` and `judge_output`."""
    replies = client.verdicts([judge_prompt(r.question, r.golden_answers, r.prediction) for r in records])
    for r, reply in zip(records, replies, strict=True):
        r.judge, r.judge_output = float(parse_verdict(reply)), reply


def summarize(records: list[EvalRecord]) -> dict[str, dict[str, float | None]]:
    """Mean EM / CEM / F1 / CEM-in-text / judge / searches overall and per question type (keys 'all' and each
    type); judge is None unless every record was judged."""
    groups: dict[str, list[EvalRecord]] = defaultdict(list)
    for r in records:
        groups["all"].append(r)
        if r.type != "all":
            groups[r.type].append(r)
    return {
        t: {
            "n": len(rs),
            "em": sum(r.em for r in rs) / len(rs),
            "cem": sum(r.cem for r in rs) / len(rs),
            "f1": sum(r.f1 for r in rs) / len(rs),
            "cem_text": sum(r.cem_text for r in rs) / len(rs),
            "judge": None if any(r.judge is None for r in rs) else sum(r.judge for r in rs) / len(rs),
            "searches": sum(r.num_searches for r in rs) / len(rs),
        }
        for t, rs in groups.items()
    }


def _row(first: str, second: str, m: dict) -> str:
    judge = "-" if m.get("judge") is None else f"{m['judge']:.3f}"
    return (
        f"{first:<14}{second:<14}{m['n']:>5}{m['em']:>8.3f}{m['cem']:>8.3f}{m['f1']:>8.3f}"
        f"{m['cem_text']:>10.3f}{judge:>8}{m['searches']:>10.2f}"
    )


_COLUMNS = f"{'n':>5}{'EM':>8}{'CEM':>8}{'F1':>8}{'CEM-text':>10}{'judge':>8}{'searches':>10}"


def format_table(results: dict[str, dict[str, dict]]) -> str:
    """One row per mode x question type ('searches': retriever calls per question; judge '-' when not run)."""
    lines = [f"{'mode':<14}{'type':<14}{_COLUMNS}"]
    lines += [_row(mode, t, m) for mode, by_type in results.items() for t, m in by_type.items()]
    return "\n".join(lines)


def format_suite_table(results: dict[str, dict[str, dict[str, dict]]]) -> str:
    """One row per test set x mode (all question types together): the `--suite` table."""
    lines = [f"{'set':<14}{'mode':<14}{_COLUMNS}"]
    lines += [
        _row(name, mode, by_type["all"]) for name, modes in results.items() for mode, by_type in modes.items()
    ]
    return "\n".join(lines)


def write_records(path: Path, records: list[EvalRecord]) -> None:
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(asdict(r)) + "\n")

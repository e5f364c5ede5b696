"""`searchrl eval`: greedy evaluation of a model on questions (any format `load_qa` reads) in three modes (the
seeds' baselines):

- `no-retrieval`: the question alone; answer inside <answer></answer> (naive generation);
- `naive-rag`: the top-k passages for the question itself placed in the prompt (standard RAG);
- `search-agent`: the rollout protocol's search loop (the trained agent), with the retriever in process.

Every mode runs through the same `run_search_loop` (the first two without searches and with one segment of answer
budget), so decoding and answer extraction are identical. Returns per-item records and EM / CEM / F1 / searches
per question type.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from searchrl.protocol import Document, Example, Protocol
from searchrl_reward.research_rules import boxed_answer
from searchrl_reward.rules import cover_exact_match, exact_match, extract_answer, f1_score
from searchrl_rollout.engine import Engine
from searchrl_rollout.search_loop import LoopLimits, Sample, build_prompt_ids, run_search_loop
from searchrl_trainer.data import QAItem

MODES = ("no-retrieval", "naive-rag", "search-agent")

_DIRECT = (
    "Answer the question. First think briefly inside <think> </think>, then give only the final answer, a few "
    "words, inside <answer> </answer>."
)
_RAG = _DIRECT + " Use the documents given with the question."


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


def _question_for(
    mode: str, item: QAItem, docs: list[Document] | None, protocol: Protocol
) -> tuple[str, str]:
    """(system prompt, user text) for the baseline modes, documents in the protocol's format; the search agent
    uses the rollout prompt."""
    if mode == "no-retrieval":
        return _DIRECT, item.question
    if mode == "naive-rag":
        listing = protocol.docs_body(docs or []).strip()
        return _RAG, f"Documents:\n{listing}\n\nQuestion: {item.question}"
    raise ValueError(f"no baseline prompt for mode {mode!r}")


def evaluate(
    engine: Engine,
    tokenizer,
    protocol: Protocol,
    search: Callable[[list[str], int], list[list[Document]]],  # noqa: ANN001
    items: list[QAItem],
    mode: str,
    limits: LoopLimits,
    chat_template: bool = True,
    system_prompt: str = "",
    examples: Sequence[Example] = (),
) -> list[EvalRecord]:
    """Greedy answers of `items` in `mode`. The search agent is prompted exactly as rollouts are
    (`system_prompt`, `examples`: config `rollout.*`; '' = the protocol's instructions)."""
    if mode not in MODES:
        raise ValueError(f"--mode: unknown mode {mode!r} (known: {', '.join(MODES)})")
    docs = search([it.question for it in items], limits.top_k) if mode == "naive-rag" else [None] * len(items)
    samples = []
    for it, d in zip(items, docs, strict=True):
        if mode == "search-agent":
            ids = build_prompt_ids(tokenizer, protocol, it.question, chat_template, system_prompt, examples)
        else:
            system, user = _question_for(mode, it, d, protocol)
            ids = build_prompt_ids(tokenizer, protocol, user, chat_template, system)
        samples.append(Sample(ids))
    agent = mode == "search-agent"
    greedy = replace(limits, temperature=0.0, top_p=1.0)
    if not agent:  # the baselines answer in one segment: they have nothing to wait for
        greedy = replace(greedy, max_searches=0, max_turns=0, max_response_tokens=limits.segment_tokens)
    run_search_loop(
        engine, search, lambda t: tokenizer.encode(t, add_special_tokens=False), protocol, samples, greedy
    )
    out = []
    for it, s in zip(items, samples, strict=True):
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
                s.num_searches,
                cover_exact_match(own, it.golden_answers),
            )
        )
    return out


def summarize(records: list[EvalRecord]) -> dict[str, dict[str, float]]:
    """Mean EM / CEM / F1 / CEM-in-text / searches overall and per question type (keys 'all' and each type)."""
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
            "searches": sum(r.num_searches for r in rs) / len(rs),
        }
        for t, rs in groups.items()
    }


def format_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [f"{'mode':<14}{'type':<12}{'n':>5}{'EM':>8}{'CEM':>8}{'F1':>8}{'CEM-text':>10}{'searches':>10}"]
    for mode, by_type in results.items():
        for t, m in by_type.items():
            lines.append(
                f"{mode:<14}{t:<12}{m['n']:>5}{m['em']:>8.3f}{m['cem']:>8.3f}{m['f1']:>8.3f}"
                f"{m['cem_text']:>10.3f}{m['searches']:>10.2f}"
            )
    return "\n".join(lines)


def write_records(path: Path, records: list[EvalRecord]) -> None:
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(asdict(r)) + "\n")

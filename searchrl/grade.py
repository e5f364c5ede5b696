"""`searchrl grade`: R1-Searcher's difficulty grading of training questions by rollouts-to-solve, and the two
training stages' files.

R1-Searcher (paper section 4.1, Table 1) samples search-agent rollouts per training question and counts how many
it takes to answer correctly: easy (< 10 rollouts), medium (10 to 20), difficult (> 20); stage 1 trains on medium
questions, stage 2 on medium and difficult ones. Here:
- a question gets sampled rollouts exactly as training makes them (the rollout config's protocol, prompt,
  temperature and limits), in rounds of `eval.grade_easy_below`, until one is correct (CEM, the seed's answer
  check) or `eval.grade_rollouts` are spent;
- rollouts-to-solve is the 1-based index of the first correct rollout; `level` maps it with the config's
  thresholds (`eval.grade_easy_below`, `eval.grade_difficult_above`); never solved is "unsolved" (in neither
  stage);
- outputs: `grades.jsonl` (idx, question, answer, level, rollouts_to_solve, rollouts, pred_anses: every rollout's
  answer, as the seed's stage-1 rows carry), `stage_1.jsonl` (medium) and `stage_2.jsonl` (medium + difficult) in
  R1-Searcher's {"idx", "question", "answer"} format, which `trainer.stages[].data` reads.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from searchrl.config import Config
from searchrl.eval_cli import search_fn
from searchrl.evaluate import predicted_answer, spread
from searchrl.models import resolve_model
from searchrl.protocol import Protocol, get_protocol
from searchrl_reward.rules import cover_exact_match
from searchrl_rollout.engine import Engine, per_request_seeds
from searchrl_rollout.search_loop import LoopLimits, Sample, SearchFn, build_prompt_ids, run_search_loop
from searchrl_trainer.data import QAItem, load_qa

STAGE_LEVELS = {"stage_1": ("medium",), "stage_2": ("medium", "difficult")}  # R1-Searcher Table 1


def level(rollouts_to_solve: int | None, easy_below: int, difficult_above: int) -> str:
    """R1-Searcher's difficulty of a question first solved by rollout number `rollouts_to_solve` (None: never)."""
    if rollouts_to_solve is None:
        return "unsolved"
    if rollouts_to_solve < easy_below:
        return "easy"
    return "difficult" if rollouts_to_solve > difficult_above else "medium"


def rollouts_to_solve(
    engine: Engine,
    tokenizer,  # noqa: ANN001
    protocol: Protocol,
    search: SearchFn,
    items: list[QAItem],
    limits: LoopLimits,
    prompt: dict,
    max_rollouts: int,
    round_size: int,
    seed: int,
) -> list[tuple[int | None, list[str | None]]]:
    """Per item: the 1-based index of its first correct rollout (None if none of `max_rollouts` was) and the
    answers of the rollouts made (sampling stops for an item once it is solved)."""
    prompts = [build_prompt_ids(tokenizer, protocol, it.question, **prompt) for it in items]
    answers: list[list[str | None]] = [[] for _ in items]
    solved: list[int | None] = [None] * len(items)
    seeded = per_request_seeds()
    while True:
        todo = [i for i in range(len(items)) if solved[i] is None and len(answers[i]) < max_rollouts]
        if not todo:
            break
        batch = [
            (i, len(answers[i]) + j)
            for i in todo
            for j in range(min(round_size, max_rollouts - len(answers[i])))
        ]
        samples = [Sample(prompts[i], seed + 1000 * i + r if seeded else None) for i, r in batch]
        run_search_loop(
            engine, search, lambda t: tokenizer.encode(t, add_special_tokens=False), protocol, samples, limits
        )
        for (i, r), s in zip(batch, samples, strict=True):
            pred = predicted_answer(protocol, tokenizer.decode(s.response_ids, skip_special_tokens=False))
            answers[i].append(pred)
            if solved[i] is None and cover_exact_match(pred, items[i].golden_answers):
                solved[i] = r + 1
        for i in todo:  # rollouts after the first correct one of a round do not count
            if solved[i] is not None:
                answers[i] = answers[i][: solved[i]]
    return list(zip(solved, answers, strict=True))


def write_grades(
    out: Path, items: list[QAItem], results: list, easy_below: int, difficult_above: int
) -> Counter:
    """grades.jsonl, stage_1.jsonl and stage_2.jsonl under `out`; returns the count per level."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for idx, (it, (solved, answers)) in enumerate(zip(items, results, strict=True)):
        answer = it.golden_answers[0] if len(it.golden_answers) == 1 else it.golden_answers
        rows.append(
            {
                "idx": idx,
                "question": it.question,
                "answer": answer,
                "level": level(solved, easy_below, difficult_above),
                "rollouts_to_solve": solved,
                "rollouts": len(answers),
                "pred_anses": answers,
            }
        )
    with (out / "grades.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    for stage, levels in STAGE_LEVELS.items():
        with (out / f"{stage}.jsonl").open("w") as f:
            f.writelines(
                json.dumps({k: r[k] for k in ("idx", "question", "answer")}) + "\n"
                for r in rows
                if r["level"] in levels
            )
    return Counter(r["level"] for r in rows)


def run_grade(cfg: Config, model: str | None, data: str, limit: int | None, out: str) -> int:
    from transformers import AutoTokenizer

    from searchrl_retriever.service import open_retriever
    from searchrl_rollout.engine import VllmEngine

    ec, rc = cfg.eval, cfg.rollout
    if ec.grade_difficult_above < ec.grade_easy_below:
        raise ValueError("eval.grade_difficult_above: must be >= eval.grade_easy_below")
    items = spread(load_qa(data), limit)
    path = resolve_model(model or cfg.model.path, cfg.model.cache_dir, cfg.run.seed)
    search = search_fn(open_retriever(cfg, progress=True))
    engine = VllmEngine.from_config(path, rc, cfg.run.seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt = {
        "chat_template": cfg.model.chat_template,
        "system_prompt": rc.system_prompt,
        "examples": rc.examples,
    }
    results = rollouts_to_solve(
        engine,
        tokenizer,
        get_protocol(rc.protocol),
        search,
        items,
        LoopLimits.from_config(rc, cfg.retriever),
        prompt,
        ec.grade_rollouts,
        ec.grade_easy_below,
        cfg.run.seed,
    )
    counts = write_grades(Path(out), items, results, ec.grade_easy_below, ec.grade_difficult_above)
    levels = ", ".join(f"{k} {counts.get(k, 0)}" for k in ("easy", "medium", "difficult", "unsolved"))
    print(f"graded {len(items)} questions: {levels}; written to {out}", flush=True)
    return 0

"""`searchrl reward score --preset P < in.jsonl > out.jsonl`: score JSONL lines {question, response,
golden_answers} offline with any preset of `rules.PRESETS` and the `reward.r1s_*` switches of the config;
output lines {reward, em, cem, f1, format_ok, num_searches} in input order.
A bad line fails with its line number and nothing is written for a partial batch."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from searchrl.config import RewardConfig
from searchrl_reward.scorer import RewardScorer, ScoreInput, rule_options


def read_items(stream: TextIO) -> list[ScoreInput]:
    items: list[ScoreInput] = []
    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            golds = obj["golden_answers"]
            if isinstance(golds, str):
                golds = [golds]
            items.append(
                ScoreInput(str(obj.get("question", "")), str(obj["response"]), [str(g) for g in golds])
            )
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f"stdin line {lineno}: expected {{question, response, golden_answers}}: {e!r}"
            ) from None
    return items


def score_stream(
    preset: str, rc: RewardConfig | None = None, inp: TextIO = sys.stdin, out: TextIO = sys.stdout
) -> int:
    rc = rc or RewardConfig()
    items = read_items(inp)
    scorer = RewardScorer(max_batch=max(len(items), 1), max_response_chars=10**9, options=rule_options(rc))
    for r in scorer.score(preset, items):
        out.write(
            json.dumps(
                {
                    "reward": r.reward,
                    "em": r.em,
                    "cem": r.cem,
                    "f1": r.f1,
                    "format_ok": r.format_ok,
                    "num_searches": r.num_searches,
                }
            )
            + "\n"
        )
    return len(items)

"""`RewardScorer`: request validation around the pure rules in `rules.py`. Used by the gRPC servicer, the
`searchrl reward score` CLI and in-process evaluation, so all three enforce the same limits."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter

from searchrl.grpcutil import InvalidArgument
from searchrl_reward.rules import PRESETS, ScoreResult, score

SCORED = Counter("searchrl_reward_items_total", "Responses scored", ["preset"])


@dataclass(frozen=True)
class ScoreInput:
    question: str
    response: str
    golden_answers: list[str]


class RewardScorer:
    def __init__(self, max_batch: int = 4096, max_response_chars: int = 200_000) -> None:
        self.max_batch = max_batch
        self.max_response_chars = max_response_chars

    def validate(self, preset: str, items: list[ScoreInput]) -> None:
        if preset not in PRESETS:
            raise InvalidArgument("preset", f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        if not items:
            raise InvalidArgument("items", "must hold at least one item")
        if len(items) > self.max_batch:
            raise InvalidArgument("items", f"{len(items)} items exceed the limit of {self.max_batch}")
        for i, it in enumerate(items):
            if len(it.response) > self.max_response_chars:
                raise InvalidArgument(
                    f"items[{i}].response", f"has {len(it.response)} chars, limit {self.max_response_chars}"
                )
            if not it.golden_answers or not any(g.strip() for g in it.golden_answers):
                raise InvalidArgument(f"items[{i}].golden_answers", "needs at least one non-empty answer")

    def score(self, preset: str, items: list[ScoreInput]) -> list[ScoreResult]:
        self.validate(preset, items)
        out = [
            score(preset, it.question, it.response, [g for g in it.golden_answers if g.strip()])
            for it in items
        ]
        SCORED.labels(preset).inc(len(out))
        return out

"""`RewardScorer`: request validation around the pure rules in `rules.py` (the `PRESETS` table), with the
R1-Searcher switches of `RewardConfig` (`r1s_*`). Used by the gRPC servicer, the `searchrl reward score` CLI and
in-process evaluation, so all three enforce the same limits and switches.

Every size a request controls is capped (items, response, question, gold count and gold length), and the rules
are linear in those sizes, so one request's CPU cost is bounded by its size. A limit that is exceeded raises
`InvalidArgument` naming the field, e.g. `items[3].golden_answers[1]`."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter

from searchrl.config import RewardConfig
from searchrl.grpcutil import InvalidArgument
from searchrl_reward.rules import PRESETS, RuleOptions, ScoreResult, score

SCORED = Counter("searchrl_reward_items_total", "Responses scored", ["preset"])

_DEFAULTS = RewardConfig()
_SEED_OPTIONS = RuleOptions()


@dataclass(frozen=True)
class ScoreInput:
    question: str
    response: str
    golden_answers: list[str]


class RewardScorer:
    """Validates a batch against the limits (defaults: those of `RewardConfig`), then scores it with `options`."""

    def __init__(
        self,
        max_batch: int = _DEFAULTS.max_batch,
        max_response_chars: int = _DEFAULTS.max_response_chars,
        *,
        max_golden_answers: int = _DEFAULTS.max_golden_answers,
        max_golden_answer_chars: int = _DEFAULTS.max_golden_answer_chars,
        max_question_chars: int = _DEFAULTS.max_question_chars,
        options: RuleOptions = _SEED_OPTIONS,
    ) -> None:
        self.max_batch = max_batch
        self.max_response_chars = max_response_chars
        self.max_golden_answers = max_golden_answers
        self.max_golden_answer_chars = max_golden_answer_chars
        self.max_question_chars = max_question_chars
        self.options = options

    @classmethod
    def from_config(cls, rc: RewardConfig) -> RewardScorer:
        return cls(
            rc.max_batch,
            rc.max_response_chars,
            max_golden_answers=rc.max_golden_answers,
            max_golden_answer_chars=rc.max_golden_answer_chars,
            max_question_chars=rc.max_question_chars,
            options=rule_options(rc),
        )

    def validate(self, preset: str, items: list[ScoreInput]) -> None:
        if preset not in PRESETS:
            raise InvalidArgument("preset", f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        if not items:
            raise InvalidArgument("items", "must hold at least one item")
        if len(items) > self.max_batch:
            raise InvalidArgument("items", f"{len(items)} items exceed the limit of {self.max_batch}")
        for i, it in enumerate(items):
            _check_chars(f"items[{i}].question", it.question, self.max_question_chars)
            _check_chars(f"items[{i}].response", it.response, self.max_response_chars)
            golds = it.golden_answers
            if len(golds) > self.max_golden_answers:
                raise InvalidArgument(
                    f"items[{i}].golden_answers",
                    f"{len(golds)} answers exceed the limit of {self.max_golden_answers}",
                )
            for j, gold in enumerate(golds):
                _check_chars(f"items[{i}].golden_answers[{j}]", gold, self.max_golden_answer_chars)
            if not any(g.strip() for g in golds):
                raise InvalidArgument(f"items[{i}].golden_answers", "needs at least one non-empty answer")

    def score(self, preset: str, items: list[ScoreInput]) -> list[ScoreResult]:
        self.validate(preset, items)
        out = [
            score(preset, it.question, it.response, [g for g in it.golden_answers if g.strip()], self.options)
            for it in items
        ]
        SCORED.labels(preset).inc(len(out))
        return out


def rule_options(rc: RewardConfig) -> RuleOptions:
    """The R1-Searcher switches of the reward config (`reward.r1s_*`)."""
    return RuleOptions(rc.r1s_bool_mapping, rc.r1s_stage2_checks, rc.r1s_format_penalty)


def _check_chars(field: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise InvalidArgument(field, f"has {len(text)} chars, limit {limit}")

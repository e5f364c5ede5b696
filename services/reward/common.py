"""What every reward preset shares: the `ScoreResult` it returns and token metrics on normalised strings.

Contract: pure functions on answers that the caller has already normalised (each seed normalises its own way);
no tags, no presets. The seeds share one F1 rule (R1-Searcher reward_server_llama_stage2.py `f1_score`,
ReSearch re_search.py `get_f1_score`): when either side normalises to yes / no / noanswer and the two differ,
the pair scores 0; otherwise token F1 with multiset overlap.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

SPECIAL_ANSWERS = frozenset({"yes", "no", "noanswer"})


@dataclass(frozen=True)
class ScoreResult:
    """One scored response: the preset's reward plus answer metrics (EM / CEM / F1 under the preset's own
    normalisation, 0 when the preset extracts no answer), the preset's format condition and the number of
    retrievals in the response."""

    reward: float
    em: float
    cem: float
    f1: float
    format_ok: bool
    num_searches: int


def token_f1(pred_norm: str, pred_counts: Counter[str], gold_norm: str) -> float:
    """F1 of one normalised prediction (with its token counts, counted once for all golds) against one
    normalised gold; 0 under the yes / no / noanswer rule above."""
    if pred_norm in SPECIAL_ANSWERS and pred_norm != gold_norm:
        return 0.0
    if gold_norm in SPECIAL_ANSWERS and pred_norm != gold_norm:
        return 0.0
    gold_counts = Counter(gold_norm.split())
    num_same = sum(min(n, pred_counts[tok]) for tok, n in gold_counts.items())
    if num_same == 0:
        return 0.0
    precision = num_same / pred_counts.total()
    recall = num_same / gold_counts.total()
    return 2 * precision * recall / (precision + recall)


def answer_metrics(pred_norm: str, golds_norm: list[str]) -> tuple[float, float, float]:
    """(EM, CEM, F1) of a normalised prediction, each maximised over the normalised golds.

    EM: equal strings. CEM (cover EM): every token of the gold is among the prediction's tokens, order
    ignored; tokens from `split(" ")` as R1-Searcher's `cover_exact_match_score_1`. F1: `token_f1`.
    """
    pred_tokens = set(pred_norm.split(" "))
    counts = Counter(pred_norm.split())
    em = any(pred_norm == g for g in golds_norm)
    cem = any(all(tok in pred_tokens for tok in g.split(" ")) for g in golds_norm)
    f1 = max((token_f1(pred_norm, counts, g) for g in golds_norm), default=0.0)
    return float(em), float(cem), f1

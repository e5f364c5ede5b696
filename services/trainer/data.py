"""Training questions: loading R1-Searcher / Search-R1 JSONL and a resumable, seeded epoch iterator.

Accepted lines: {"question", "answer": str | [str]} (R1-Searcher), {"question", "golden_answers": [..]}, or
Search-R1 {"question", "reward_model": {"ground_truth": {"target": [..]}}}. Errors name the file and line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from searchrl.jsonl import read_jsonl


@dataclass(frozen=True)
class QAItem:
    question: str
    golden_answers: list[str]
    type: str = ""  # question type when the file gives one (single_hop, two_hop, comparison, ...)


def parse_qa(obj: object, where: str) -> QAItem:
    if not isinstance(obj, dict) or not str(obj.get("question", "")).strip():
        raise ValueError(f"{where}: needs a non-empty 'question'")
    golds = obj.get("golden_answers", obj.get("answer", obj.get("answers")))
    if golds is None and isinstance(obj.get("reward_model"), dict):
        golds = obj["reward_model"].get("ground_truth", {}).get("target")
    if isinstance(golds, str):
        golds = [golds]
    if not isinstance(golds, list) or not [g for g in golds if str(g).strip()]:
        raise ValueError(f"{where}: needs 'answer' (string or list), 'golden_answers' or reward_model target")
    return QAItem(
        str(obj["question"]).strip(), [str(g) for g in golds if str(g).strip()], str(obj.get("type", ""))
    )


def load_qa(path: str | Path) -> list[QAItem]:
    items = [parse_qa(obj, where) for where, obj in read_jsonl(path, "data file")]
    if not items:
        raise ValueError(f"{path}: no questions")
    return items


@dataclass
class Cursor:
    epoch: int = 0
    position: int = 0


class EpochIterator:
    """Yields (epoch, position, item) forever, reshuffling each epoch with `seed + epoch`; resumable by cursor."""

    def __init__(self, items: list[QAItem], seed: int, cursor: Cursor | None = None) -> None:
        self.items = items
        self.seed = seed
        self.cursor = cursor or Cursor()
        self._order = self._permutation(self.cursor.epoch)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.items)))
        random.Random(self.seed + epoch).shuffle(order)
        return order

    def next(self) -> tuple[int, int, QAItem]:
        if self.cursor.position >= len(self.items):
            self.cursor = Cursor(self.cursor.epoch + 1, 0)
            self._order = self._permutation(self.cursor.epoch)
        c = self.cursor
        item = self.items[self._order[c.position]]
        self.cursor = Cursor(c.epoch, c.position + 1)
        return c.epoch, c.position, item

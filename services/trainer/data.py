"""Training and evaluation questions in the seeds' file formats, and a resumable, seeded epoch iterator.

Files are JSONL, or parquet (`.parquet`, as the verl-based seeds write them). Accepted rows:
- R1-Searcher {"question", "answer": str | [str]}; FlashRAG {"question", "golden_answers": [..]};
- Search-R1 (`nq_search.py`) {"question", "golden_answers", "prompt", "reward_model": {"ground_truth":
  {"target": [..]}}, "data_source", ...}: a row without `question` takes it from its `prompt` (the text after
  the last "Question: " of the user message);
- ReSearch (`prepare_musique.py`) {"question", "reward_model": {"ground_truth": [..]}, "data_source", ...}.
The question type is `type`, else `data_source` (per-type eval tables). Errors name the file and line or row.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from searchrl.jsonl import read_jsonl


@dataclass(frozen=True)
class QAItem:
    question: str
    golden_answers: list[str]
    type: str = ""  # question type or source when the file gives one (single_hop, comparison, nq, ...)


def _question(obj: dict) -> str:
    question = str(obj.get("question") or "").strip()
    prompt = obj.get("prompt")
    if not question and isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        question = str(prompt[-1].get("content", "")).rpartition("Question: ")[2].strip()
    return question


def _golds(obj: dict) -> object:
    golds = obj.get("golden_answers", obj.get("answer", obj.get("answers")))
    if golds is None and isinstance(obj.get("reward_model"), dict):
        truth = obj["reward_model"].get("ground_truth")
        golds = truth.get("target") if isinstance(truth, dict) else truth  # Search-R1 | ReSearch
    return [golds] if isinstance(golds, str) else golds


def parse_qa(obj: object, where: str) -> QAItem:
    if not isinstance(obj, dict) or not _question(obj):
        raise ValueError(f"{where}: needs a non-empty 'question' (or a Search-R1 'prompt')")
    golds = _golds(obj)
    if not isinstance(golds, list) or not [g for g in golds if str(g).strip()]:
        raise ValueError(
            f"{where}: needs 'answer' (string or list), 'golden_answers' or reward_model.ground_truth(.target)"
        )
    kind = obj.get("type") or obj.get("data_source") or ""
    return QAItem(_question(obj), [str(g) for g in golds if str(g).strip()], str(kind))


def _read_parquet(path: Path) -> Iterator[tuple[str, object]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise FileNotFoundError(f"data file: {path} does not exist")
    try:
        rows = pq.read_table(path).to_pylist()
    except pa.ArrowException as e:
        raise ValueError(f"{path}: not a parquet file ({e})") from None
    for i, row in enumerate(rows, 1):
        yield f"{path}:row {i}", row


def load_qa(path: str | Path) -> list[QAItem]:
    p = Path(path)
    rows = _read_parquet(p) if p.suffix == ".parquet" else read_jsonl(p, "data file")
    items = [parse_qa(obj, where) for where, obj in rows]
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

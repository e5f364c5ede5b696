"""Corpus loading. Accepts JSONL lines {"id", "title", "text"} or the Search-R1 form {"id", "contents"} where
contents is '"Title"\\ntext' (title optional). Raises ValueError naming the file and line on bad input."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str

    def as_document(self) -> str:
        """The passage as inserted into a rollout: 'Title: text' (or just the text without a title)."""
        return f"{self.title}: {self.text}" if self.title else self.text

    def embed_text(self) -> str:
        return f"{self.title}. {self.text}" if self.title else self.text


def parse_passage(obj: object, where: str) -> Passage:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object")
    pid = str(obj.get("id", obj.get("_id", "")))
    if "text" in obj:
        title, text = str(obj.get("title", "")), str(obj["text"])
    elif "contents" in obj:
        # Search-R1: contents = '"Title"\ntext'
        head, sep, rest = str(obj["contents"]).partition("\n")
        title, text = (head.strip().strip('"'), rest) if sep else ("", head)
    else:
        raise ValueError(f"{where}: needs a 'text' or 'contents' field")
    if not pid:
        raise ValueError(f"{where}: needs an 'id' field")
    return Passage(pid, title, text.strip())


def load_corpus(path: str | Path) -> list[Passage]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"retriever.corpus: {p} does not exist")
    out: list[Passage] = []
    with p.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{lineno}: not JSON: {e}") from None
            out.append(parse_passage(obj, f"{p}:{lineno}"))
    if not out:
        raise ValueError(f"retriever.corpus: {p} has no passages")
    return out

"""Corpus loading. Accepts JSONL lines {"id", "title", "text"} or the Search-R1 form {"id", "contents"} where
contents is '"Title"\\ntext' (title optional). Raises ValueError naming the file and line on bad input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from searchrl.jsonl import read_jsonl


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
    out = [parse_passage(obj, where) for where, obj in read_jsonl(path, "retriever.corpus")]
    if not out:
        raise ValueError(f"retriever.corpus: {path} has no passages")
    return out

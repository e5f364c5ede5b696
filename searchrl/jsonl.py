"""Reading JSONL input files with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def read_jsonl(path: str | Path, what: str) -> Iterator[tuple[str, object]]:
    """Yield (`file:line`, parsed object) for each non-blank line. `what` names the input in errors (a config key
    such as `retriever.corpus`). Raises FileNotFoundError / ValueError naming the file (and line)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: {p} does not exist")
    with p.open() as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield f"{p}:{lineno}", json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}:{lineno}: not JSON: {e}") from None

"""Checks before anything starts (`searchrl up`, `searchrl demo`), and what to say when a service dies.

- `missing_inputs(cfg)` lists every input file or folder the config names that does not exist, each as
  "<dotted key>: <path> does not exist", so a run fails before it starts a process, naming the key. Builtin
  names (`builtin:...`) and empty optional paths are not files; outputs (run dir, index dir, caches) are made.
- `last_error(log)` is the line of a service log that says why it died: the last exception line of a traceback,
  "error: ..." line or ERROR/CRITICAL record, else the last line that mentions an error, else the last line.
"""

from __future__ import annotations

import re
from pathlib import Path

from searchrl.config import Config

_BUILTIN = "builtin:"
# A line that says why: an exception line of a traceback, the CLI's "error: ..." or a log record at ERROR or above.
_SAYS_WHY = re.compile(
    r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b|error:|fatal:)|\b(ERROR|CRITICAL)\b"
)
_MENTIONS_ERROR = re.compile(r"\b(error|exception|fatal|failed)\b", re.IGNORECASE)


def _inputs(cfg: Config) -> list[tuple[str, str, bool]]:
    """(dotted key, path, must be a folder) of every input path set in `cfg`."""
    out = [("model.path", cfg.model.path, True)]
    r = cfg.retriever
    if r.mode not in ("router", "web"):  # the router's shards and a web search hold the corpus
        out += [("retriever.corpus", r.corpus, False), ("retriever.embedder", r.embedder, True)]
    if r.mode == "web" and r.web.key_file:
        out.append(("retriever.web.key_file", r.web.key_file, False))
    out += [(f"trainer.stages[{i}].data", s.data, False) for i, s in enumerate(cfg.trainer.stages)]
    sec = cfg.security
    out += [
        (f"security.{k}", getattr(sec, k), False) for k in ("token_file", "tls_cert", "tls_key", "tls_ca")
    ]
    return [(k, p, d) for k, p, d in out if p and not p.startswith(_BUILTIN)]


def missing_inputs(cfg: Config) -> list[str]:
    """One line per input path that does not exist (or is a file where a folder is needed), naming the key."""
    problems = []
    for key, value, folder in _inputs(cfg):
        path = Path(value).expanduser()
        if not path.exists():
            problems.append(f"{key}: {value} does not exist")
        elif folder and not path.is_dir():
            problems.append(f"{key}: {value} is not a folder")
    return problems


def last_error(log: Path, tail_bytes: int = 64 * 1024) -> str:
    """Why the service writing `log` died, in one line ('' when the log is empty or missing)."""
    try:
        with log.open("rb") as f:
            f.seek(max(log.stat().st_size - tail_bytes, 0))
            lines = [x.strip() for x in f.read().decode(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    for pattern in (_SAYS_WHY, _MENTIONS_ERROR):
        hits = [x for x in lines if pattern.search(x)]
        if hits:
            return hits[-1]
    return lines[-1] if lines else ""

"""Preflight: every missing input path is named by its key before anything starts; a dead service's log gives
the line that says why."""

from __future__ import annotations

from pathlib import Path

from searchrl.config import load_config
from searchrl.preflight import last_error, missing_inputs


def test_a_valid_config_has_nothing_missing():
    assert missing_inputs(load_config("configs/tiny.yaml")) == []


def test_every_missing_input_is_named_by_its_key(tmp_path):
    cfg = load_config("configs/tiny.yaml")
    cfg.retriever.corpus = str(tmp_path / "nope.jsonl")
    cfg.trainer.stages[1].data = "data/tiny/gone.jsonl"
    cfg.model.path = str(tmp_path)  # exists: a folder is fine
    cfg.retriever.embedder = "data/tiny/corpus.jsonl"  # a file where a model folder is needed
    cfg.security.token_file = str(tmp_path / "token")
    assert missing_inputs(cfg) == [
        f"retriever.corpus: {tmp_path / 'nope.jsonl'} does not exist",
        "retriever.embedder: data/tiny/corpus.jsonl is not a folder",
        "trainer.stages[1].data: data/tiny/gone.jsonl does not exist",
        f"security.token_file: {tmp_path / 'token'} does not exist",
    ]


def test_a_router_needs_no_corpus_of_its_own():
    cfg = load_config("configs/tiny.yaml")
    cfg.retriever.corpus = "/nowhere.jsonl"
    cfg.retriever.router.shards = ["shard-0:50051"]
    cfg.retriever.mode = "router"
    assert missing_inputs(cfg) == []


def _log(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "svc.log"
    p.write_text(text)
    return p


def test_last_error_is_the_exception_line_of_the_traceback(tmp_path):
    log = _log(
        tmp_path,
        'INFO loading\nTraceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
        "searchrl.config.ConfigError: retriever.corpus: data/x.jsonl does not exist\nINFO shutting down\n",
    )
    assert last_error(log) == "searchrl.config.ConfigError: retriever.corpus: data/x.jsonl does not exist"


def test_last_error_is_the_last_line_that_says_why_not_an_earlier_logged_exception(tmp_path):
    log = _log(
        tmp_path,
        "INFO faiss.loader: Could not load library with AVX2 support due to:\n"
        "ModuleNotFoundError(\"No module named 'faiss.swigfaiss_avx2'\")\nINFO loading\n"
        "error: corpus.jsonl:1: needs a 'text' or 'contents' field\n",
    )
    assert last_error(log) == "error: corpus.jsonl:1: needs a 'text' or 'contents' field"


def test_last_error_falls_back_to_an_error_mention_then_the_last_line(tmp_path):
    assert (
        last_error(_log(tmp_path, "ok\nERROR engine failed to start\nbye\n"))
        == "ERROR engine failed to start"
    )
    assert last_error(_log(tmp_path, "starting\n\nKilled\n\n")) == "Killed"
    assert last_error(tmp_path / "missing.log") == ""

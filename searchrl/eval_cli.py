"""Wiring for `searchrl eval`: engine, tokenizer and in-process retriever from the config, then `evaluate` over one
data file or a suite of test sets, then the judge (`--judge`) over every record.

Outputs under the out dir: `results.json`, `table.txt` and per mode `<mode>.jsonl` (a suite: `<set>/<mode>.jsonl`);
with several models, each under `<out>/<model folder name>/`; the local judge server's log as `judge-server.log`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from searchrl.baselines import BaselineSettings
from searchrl.config import Config, ConfigError
from searchrl.evaluate import (
    ALL_MODES,
    MODES,
    evaluate,
    format_suite_table,
    format_table,
    judge_records,
    spread,
    summarize,
    write_records,
)
from searchrl.judge import JudgeClient, JudgeError, local_judge_server
from searchrl.models import resolve_model
from searchrl.protocol import Document, get_protocol
from searchrl_rollout.search_loop import LoopLimits, SearchFn
from searchrl_trainer.data import QAItem, load_qa

# `--suite r1searcher`: the seed's four test sets (file names as R1-Searcher publishes them) under eval.suite_dir.
SUITES = {
    "r1searcher": {
        "hotpotqa": "hotpotqa_500.jsonl",
        "2wiki": "2wiki_500.jsonl",
        "musique": "musique_500.jsonl",
        "bamboogle": "bamboogle.jsonl",
    }
}


def eval_sets(cfg: Config, data: str | None, suite: str | None, limit: int | None) -> dict[str, list[QAItem]]:
    """Name -> questions (`limit` spread over each set): the `--data` file (name 'data'), or the suite's sets."""
    if bool(data) == bool(suite):
        raise ConfigError("--data / --suite: give exactly one")
    if data:
        return {"data": spread(load_qa(data), limit)}
    if suite not in SUITES:
        raise ConfigError(f"--suite: unknown suite {suite!r} (known: {', '.join(SUITES)})")
    folder = Path(cfg.eval.suite_dir)
    missing = [f for f in SUITES[suite].values() if not (folder / f).is_file()]
    if missing:
        raise ConfigError(f"eval.suite_dir: {folder} lacks {', '.join(missing)}")
    return {name: spread(load_qa(folder / f), limit) for name, f in SUITES[suite].items()}


def search_fn(retriever) -> SearchFn:  # noqa: ANN001
    """The in-process retriever as the search loop's search function (batches cut to its max_batch)."""

    def search(queries: list[str], k: int) -> list[list[Document]]:
        results: list[list[Document]] = []
        for i in range(0, len(queries), retriever.max_batch):
            hits = retriever.search(queries[i : i + retriever.max_batch], k)
            results.extend([Document(p.title, p.text) for p, _ in row] for row in hits)
        return results

    return search


@contextmanager
def judge_client(cfg: Config, log: Path) -> Iterator[JudgeClient]:
    """A client for eval.judge_url, or for vLLM's OpenAI server started on eval.judge_model_path (default
    model.path) for the block."""
    ec = cfg.eval
    key = os.environ.get(ec.judge_api_key_env, "")
    if ec.judge_url:
        if not ec.judge_model:
            raise ConfigError("eval.judge_model: required with eval.judge_url (--judge-model)")
        client = JudgeClient(ec.judge_url, ec.judge_model, key, concurrency=ec.judge_concurrency)
        client.check()
        yield client
        return
    path = resolve_model(ec.judge_model_path or cfg.model.path, cfg.model.cache_dir, cfg.run.seed)
    print(f"starting the judge: vLLM OpenAI server on {path} (log: {log})", flush=True)
    with local_judge_server(path, log, max_model_len=cfg.rollout.max_model_len) as url:
        yield JudgeClient(url, ec.judge_model or "judge", key, concurrency=ec.judge_concurrency)


def run_eval(
    cfg: Config,
    models: list[str] | None,
    data: str | None,
    modes: list[str] | None,
    limit: int | None,
    out: str | None,
    judge: bool = False,
    suite: str | None = None,
) -> int:
    """Evaluate each model in `models` (default: model.path) on `data` or the `suite`'s sets in `modes` (default:
    the three classic modes for --data, all five for --suite). One vLLM engine serves every model: the first is
    loaded at start, the others are swapped in with an in-place weight reload (they must share the architecture).
    With `judge`, every record also gets the judge's verdict."""
    from searchrl_retriever.service import open_retriever

    sets = eval_sets(cfg, data, suite, limit)
    modes = modes or list(ALL_MODES if suite else MODES)
    paths = [resolve_model(m, cfg.model.cache_dir, cfg.run.seed) for m in (models or [cfg.model.path])]
    base = Path(out or Path(cfg.run.run_dir) / "eval")
    base.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        try:  # the judge first: a wrong URL or key fails before any retrieval or generation
            client = stack.enter_context(judge_client(cfg, base / "judge-server.log")) if judge else None
            search = search_fn(open_retriever(cfg, progress=True))
            _run(cfg, paths, sets, modes, suite, data, base, search, client)
        except JudgeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


def _run(
    cfg: Config,
    paths: list[str],
    sets: dict[str, list[QAItem]],
    modes: list[str],
    suite: str | None,
    data: str | None,
    base: Path,
    search: SearchFn,
    client: JudgeClient | None,
) -> None:
    from transformers import AutoTokenizer

    from searchrl_rollout.engine import VllmEngine

    rc, ec = cfg.rollout, cfg.eval
    engine = VllmEngine.from_config(paths[0], rc, cfg.run.seed)
    tokenizer = AutoTokenizer.from_pretrained(paths[0])
    limits = LoopLimits.from_config(rc, cfg.retriever)  # evaluate() makes it greedy
    settings = BaselineSettings(ec.iter_retgen_iterations, ec.ircot_max_iter, ec.ircot_max_docs)
    for i, model_path in enumerate(paths):
        if i > 0:
            engine.load_weights(model_path)
        out_dir = base if len(paths) == 1 else base / Path(model_path).name
        results: dict[str, dict] = {}
        for name, items in sets.items():
            set_dir = out_dir if not suite else out_dir / name
            set_dir.mkdir(parents=True, exist_ok=True)
            results[name] = {}
            for mode in modes:
                t0 = time.perf_counter()
                records = evaluate(
                    engine,
                    tokenizer,
                    get_protocol(rc.protocol),
                    search,
                    items,
                    mode,
                    limits,
                    cfg.model.chat_template,
                    rc.system_prompt,
                    rc.examples,
                    settings,
                )
                seconds = time.perf_counter() - t0
                if client is not None:
                    judge_records(records, client)
                results[name][mode] = summarize(records)
                results[name][mode]["all"]["seconds"] = seconds
                write_records(set_dir / f"{mode}.jsonl", records)
        table = format_suite_table(results) if suite else format_table(results["data"])
        summary = {"model": model_path, "suite": suite, "results": results}
        if not suite:
            summary = {"model": model_path, "data": data, "results": results["data"]}
        (out_dir / "results.json").write_text(json.dumps(summary, indent=1))
        (out_dir / "table.txt").write_text(table + "\n")
        print(f"== {model_path}\n{table}\nwritten to {out_dir}", flush=True)

"""Wiring for `searchrl eval`: engine, tokenizer and in-process retriever from the config, then `evaluate`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from searchrl.config import Config
from searchrl.evaluate import MODES, evaluate, format_table, spread, summarize, write_records
from searchrl.models import resolve_model
from searchrl.protocol import Document, get_protocol
from searchrl_rollout.search_loop import LoopLimits
from searchrl_trainer.data import load_qa


def run_eval(
    cfg: Config,
    models: list[str] | None,
    data: str,
    modes: list[str] | None,
    limit: int | None,
    out: str | None,
) -> int:
    """Evaluate each model in `models` (default: model.path). One vLLM engine serves them all: the first is
    loaded at start, the others are swapped in with an in-place weight reload (they must share the architecture).
    With one model, results go to `<out>/results.json`; with several, to `<out>/<folder name>/results.json`."""
    from transformers import AutoTokenizer

    from searchrl_retriever.service import open_retriever
    from searchrl_rollout.engine import VllmEngine

    items = spread(load_qa(data), limit)
    paths = [resolve_model(m, cfg.model.cache_dir, cfg.run.seed) for m in (models or [cfg.model.path])]
    rc = cfg.rollout
    retriever = open_retriever(cfg, progress=True)

    def search(queries: list[str], k: int) -> list[list[Document]]:
        results: list[list[Document]] = []
        for i in range(0, len(queries), retriever.max_batch):
            hits = retriever.search(queries[i : i + retriever.max_batch], k)
            results.extend([Document(p.title, p.text) for p, _ in row] for row in hits)
        return results

    engine = VllmEngine.from_config(paths[0], rc, cfg.run.seed)
    tokenizer = AutoTokenizer.from_pretrained(paths[0])
    limits = LoopLimits.from_config(rc, cfg.retriever)  # evaluate() makes it greedy
    base = Path(out or Path(cfg.run.run_dir) / "eval")
    for i, model_path in enumerate(paths):
        if i > 0:
            engine.load_weights(model_path)
        out_dir = base if len(paths) == 1 else base / Path(model_path).name
        out_dir.mkdir(parents=True, exist_ok=True)
        results = {}
        for mode in modes or list(MODES):
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
            )
            results[mode] = summarize(records)
            results[mode]["all"]["seconds"] = time.perf_counter() - t0
            write_records(out_dir / f"{mode}.jsonl", records)
        (out_dir / "results.json").write_text(
            json.dumps({"model": model_path, "data": data, "results": results}, indent=1)
        )
        print(f"== {model_path}\n{format_table(results)}\nwritten to {out_dir}", flush=True)
    return 0

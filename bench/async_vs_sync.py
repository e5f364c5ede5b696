"""Off-policy training against on-policy at equal wall time, on the demo config (issue 11: steps/hour and
held-out CEM; goal >= 1.5x steps/hour at no loss of accuracy).

Two `searchrl up` runs of the same config (default configs/demo-cpu.yaml), one after the other, each with the
same training time budget (`--minutes`):
- sync: `trainer.max_staleness: 0`: every group is sampled by the newest policy, so rollout waits while the
  learner steps and the learner waits while rollout samples;
- async: `trainer.max_staleness: 2` with `trainer.decoupled_ppo: true` (AReaL's objective; `tis_cap: 0`, which it replaces): workers keep sampling
  with weights up to two versions old while the learner steps;
- async-pinned: async with `run.cpu_affinity`: the trainer alone on the last core, vLLM, retriever and reward on
  the others, so the work that now runs beside the learner does not take its core.
Then the search agent of each final policy is evaluated (greedy, `--eval-questions` held-out questions of the
demo world) in one engine. Prints and writes (`--out`, markdown) steps, steps/hour, their ratio and both CEMs with
a 95% interval. Usage:
  python bench/async_vs_sync.py [--config configs/demo-cpu.yaml] [--minutes 15] [--eval-questions 100]
                                [--out bench/results/async-vs-sync-cpu.md]
                                [--modes sync,async,async-pinned]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from searchrl.config import dump_config, load_config
from searchrl.demo import demo_config, prepare_world, run_eval
from searchrl.launcher import up
from searchrl.models import resolve_model

ASYNC = ["trainer.max_staleness=2", "trainer.decoupled_ppo=true", "trainer.tis_cap=0"]
_CPUS = sorted(os.sched_getaffinity(0))
# The learner alone on the last core; vLLM, retrieval and reward share the others (run.cpu_affinity).
# vLLM's 'auto' binding would reserve one of the rollout's cores for its scheduler: name its cores instead.
_REST = ",".join(map(str, _CPUS[:-1]))
PINNED = [f"run.cpu_affinity.trainer={_CPUS[-1]}", f"rollout.cpu_threads_bind='{_REST}'"] + [
    f"run.cpu_affinity.{s}={_REST}" for s in ("rollout", "retriever", "reward")
]
MODES = {
    "sync": ["trainer.max_staleness=0"],
    "async": ASYNC,
    "async-pinned": ASYNC + PINNED,
}


def wilson(p: float, n: int) -> tuple[float, float]:
    """95% Wilson interval of a proportion."""
    z = 1.96
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/demo-cpu.yaml")
    ap.add_argument("--minutes", type=float, default=15)
    ap.add_argument("--eval-questions", type=int, default=100)
    ap.add_argument("--run-dir", default="runs/async-vs-sync")
    ap.add_argument("--out")
    ap.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated, sync first (of {', '.join(MODES)})"
    )
    args = ap.parse_args()
    modes = args.modes.split(",")
    if modes[0] != "sync" or not set(modes) <= set(MODES) or len(_CPUS) < 2:
        raise SystemExit(f"--modes: sync first, then any of {', '.join(MODES)} (and at least 2 cpus to pin)")
    root = Path(args.run_dir).resolve()
    rows = {}
    for name in modes:
        overrides = MODES[name]
        cfg = load_config(args.config, overrides)
        world = prepare_world(cfg, cfg.run.seed, n_test=max(300, args.eval_questions))
        resolve_model(cfg.model.path, cfg.model.cache_dir, cfg.run.seed)
        cfg = demo_config(cfg, world, root / name, None, args.minutes)
        cfg.trainer.max_steps = 10_000  # the time budget ends both runs
        (root / name).mkdir(parents=True, exist_ok=True)
        config_path = root / name / "config-in.yaml"
        config_path.write_text(dump_config(cfg))
        print(f"== {name}: {' '.join(overrides)}, {args.minutes} min of training", flush=True)
        t0 = time.monotonic()
        rc = up(cfg)
        wall = time.monotonic() - t0
        if rc != 0:
            raise SystemExit(f"{name}: searchrl up exited with {rc}")
        metrics = [json.loads(x) for x in (root / name / "metrics.jsonl").read_text().splitlines()]
        res = run_eval(
            config_path,
            [str(root / name / "hf" / "final")],
            world["test"],
            root / name / "eval",
            ["search-agent"],
            args.eval_questions,
        )["final"]["search-agent"]["all"]
        rows[name] = {
            "steps": len(metrics),
            "train_minutes": args.minutes,
            "up_wall_s": wall,
            "steps_per_hour": len(metrics) / (args.minutes / 60),
            "cem": res["cem"],
            "n": res["n"],
            "staleness_mean": sum(m["staleness_mean"] for m in metrics) / max(1, len(metrics)),
        }
        print(json.dumps(rows[name]), flush=True)
    s = rows["sync"]
    lines = [
        "# Off-policy (async) against on-policy (sync) training at equal wall time",
        "",
        f"`python bench/async_vs_sync.py --config {args.config} --minutes {args.minutes:g} --eval-questions "
        f"{args.eval_questions}`, {os.cpu_count()} CPUs, load average at the end {os.getloadavg()[0]:.1f}.",
        "",
        "| run | overrides | steps in the budget | steps/hour | mean staleness | held-out search-agent CEM (95% CI) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lo, hi = wilson(r["cem"], r["n"])
        lines.append(
            f"| {name} | `{' '.join(MODES[name])}` | {r['steps']} | {r['steps_per_hour']:.1f} | "
            f"{r['staleness_mean']:.2f} | {r['cem']:.3f} ({lo:.3f}-{hi:.3f}, n={r['n']}) |"
        )
    lines.append("")
    for name in modes[1:]:
        a = rows[name]
        ratio = a["steps_per_hour"] / s["steps_per_hour"]
        lines.append(
            f"{name} / sync steps per hour: **{ratio:.2f}x** (goal >= 1.5x); CEM {a['cem']:.3f} vs {s['cem']:.3f}."
        )
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()

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
import re
from datetime import datetime
from pathlib import Path

from searchrl.config import dump_config, load_config
from searchrl.demo import demo_config, prepare_world, run_eval
from searchrl.launcher import up
from searchrl.models import resolve_model

ASYNC = ["trainer.max_staleness=2", "trainer.decoupled_ppo=true", "trainer.tis_cap=0"]
_CPUS = sorted(os.sched_getaffinity(0))
# The learner alone on the last core; vLLM, retrieval and reward share the others (run.cpu_affinity).
# vLLM's OMP threads bound to every core the rollout has ('auto' keeps one back for its scheduler when it has several).
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


_STEP_LINE = re.compile(r"^(\S+ \S+),(\d+) INFO searchrl_trainer\.loop: step \d+ ")


def step_interval_s(trainer_log: Path) -> float | None:
    """Mean seconds between consecutive trained steps after the first (the steady state: the first step also
    waits for the engines to start and the first groups to fill). None with fewer than 2 steps."""
    stamps = []
    for line in trainer_log.read_text().splitlines():
        m = _STEP_LINE.match(line)
        if m:
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
            stamps.append(when.timestamp() + int(m.group(2)) / 1000)
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else None


def summarize(run: Path, minutes: float) -> dict:
    """The row of one finished run (its metrics.jsonl, logs/trainer.log and eval/results.json)."""
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    res = json.loads((run / "eval" / "results.json").read_text())["results"]["search-agent"]["all"]
    interval = step_interval_s(run / "logs" / "trainer.log")
    return {
        "steps": len(metrics),
        "train_minutes": minutes,
        "steps_per_hour": len(metrics) / (minutes / 60),
        "step_interval_s": interval,
        "steady_steps_per_hour": 3600 / interval if interval else None,
        "cem": res["cem"],
        "n": res["n"],
        "staleness_mean": sum(m["staleness_mean"] for m in metrics) / max(1, len(metrics)),
    }


def report(rows: dict[str, dict], modes: list[str], args: argparse.Namespace) -> str:
    s = rows["sync"]
    lines = [
        "# Off-policy (async) against on-policy (sync) training at equal wall time",
        "",
        f"`python bench/async_vs_sync.py --config {args.config} --minutes {args.minutes:g} --eval-questions "
        f"{args.eval_questions} --modes {','.join(modes)}`, {os.cpu_count()} CPUs, load average at the end "
        f"{os.getloadavg()[0]:.1f}.",
        "",
        "| run | overrides | steps in the budget | steps/hour | seconds between steps after the first | "
        "mean staleness | held-out search-agent CEM (95% CI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in modes:
        r = rows[name]
        lo, hi = wilson(r["cem"], r["n"])
        interval = f"{r['step_interval_s']:.1f}" if r["step_interval_s"] else "-"
        lines.append(
            f"| {name} | `{' '.join(MODES[name])}` | {r['steps']} | {r['steps_per_hour']:.1f} | {interval} | "
            f"{r['staleness_mean']:.2f} | {r['cem']:.3f} ({lo:.3f}-{hi:.3f}, n={r['n']}) |"
        )
    lines.append("")
    for name in modes[1:]:
        a = rows[name]
        ratio = a["steps_per_hour"] / s["steps_per_hour"]
        steady = (
            f"; steady state (seconds between steps after the first) **{s['step_interval_s'] / a['step_interval_s']:.2f}x**"
            if a["step_interval_s"] and s["step_interval_s"]
            else ""
        )
        lines.append(
            f"{name} / sync steps per hour in the budget: **{ratio:.2f}x**{steady} (goal >= 1.5x); "
            f"CEM {a['cem']:.3f} vs {s['cem']:.3f}."
        )
    return "\n".join(lines) + "\n"


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
    ap.add_argument(
        "--report-only", action="store_true", help="re-render the report of the runs in --run-dir"
    )
    args = ap.parse_args()
    modes = args.modes.split(",")
    if modes[0] != "sync" or not set(modes) <= set(MODES) or len(_CPUS) < 2:
        raise SystemExit(f"--modes: sync first, then any of {', '.join(MODES)} (and at least 2 cpus to pin)")
    root = Path(args.run_dir).resolve()
    rows = {}
    for name in modes:
        if not args.report_only:
            run_mode(name, root, args)
        rows[name] = summarize(root / name, args.minutes)
        print(json.dumps(rows[name]), flush=True)
    text = report(rows, modes, args)
    print(text, flush=True)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


def run_mode(name: str, root: Path, args: argparse.Namespace) -> None:
    """One `searchrl up` of the mode for `args.minutes` of training, then the held-out evaluation."""
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
    rc = up(cfg)
    if rc != 0:
        raise SystemExit(f"{name}: searchrl up exited with {rc}")
    run_eval(
        config_path,
        [str(root / name / "hf" / "final")],
        world["test"],
        root / name / "eval",
        ["search-agent"],
        args.eval_questions,
    )


if __name__ == "__main__":
    main()

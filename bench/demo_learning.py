"""Does the demo learn? Reruns `searchrl demo` at a fixed seed and prints the held-out CEM of the search agent
before and after RL, the gain, and the baselines; `--record DIR` copies the run's config, metrics, report, plots
and results into DIR (bench/results/<name>) so a run can be compared with later ones.

Usage: python bench/demo_learning.py [--config configs/demo-cpu.yaml] [--seed 0] [--steps N] [--minutes M]
                                     [--eval-questions 100] [--curve] [--baselines]
                                     [--record bench/results/demo-cpu-seed0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

RECORDED = ("demo-config.yaml", "metrics.jsonl", "summary.json", "report.md", "results.json")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/demo-cpu.yaml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--minutes", type=float)
    ap.add_argument("--eval-questions", type=int, default=100)
    ap.add_argument("--curve", action="store_true", help="also evaluate the exports made during training")
    ap.add_argument(
        "--baselines", action="store_true", help="also evaluate no-retrieval and naive RAG untrained"
    )
    ap.add_argument("--run-dir", help="default: a temp dir")
    ap.add_argument("--record", help="copy config, metrics, report, plots and results here")
    args = ap.parse_args()
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="demo-learning-"))
    cmd = [sys.executable, "-m", "searchrl.cli", "demo", "-c", args.config, "--run-dir", str(run_dir)]
    cmd += ["--set", f"run.seed={args.seed}", "--eval-questions", str(args.eval_questions)]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    if args.minutes:
        cmd += ["--minutes", str(args.minutes)]
    if args.curve:
        cmd.append("--curve")
    if args.baselines:
        cmd.append("--baselines")
    subprocess.run(cmd, check=True)
    res = json.loads((run_dir / "results.json").read_text())
    before, after = res["before"], res["after"]
    print(f"\nseed {args.seed}, {res['curve'][-1][0]} steps, wall {res['wall_s'] / 60:.1f} min")
    for mode, res_b in before.items():
        b = res_b["all"]
        a = after[mode]["all"] if mode in after else None
        got = f"{a['cem']:.3f}" if a else "(untrained only)"
        print(f"{mode:<13} CEM {b['cem']:.3f} -> {got}   searches {b['searches']:.2f}")
    print(f"held-out CEM gain of the search agent: {100 * res['gain_cem']:+.1f} points")
    if args.record:
        dest = Path(args.record)
        dest.mkdir(parents=True, exist_ok=True)
        for name in RECORDED:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, dest / name)
        for png in run_dir.glob("*.png"):
            shutil.copy2(png, dest / png.name)
        print(f"recorded in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

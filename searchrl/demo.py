"""`searchrl demo`: the CPU demo end to end — a real small LLM learns to search a bundled fictional world.

`--protocol P` runs it under another seed's protocol (configs/demo-cpu-research.yaml, demo-cpu-search-r1.yaml:
the prompt, worked examples, budgets, algorithm and reward preset of that seed, shrunk for 2 cores).

Steps (each cached where it can be): generate the world (seeded) into `<cache>/world-seed<S>`; convert the
model; build the retriever index; evaluate the untrained model on held-out questions as a search agent (with
`--baselines` also without retrieval and with naive RAG); train with the config's stages through `searchrl up`
(R1-Searcher: the stage-1 reward, then stage-2); evaluate the trained policy (`hf/final`) as a search agent, and
with `--curve` the exports made during training (`hf/step_N`) too; write `report.md`, `results.json` and PNG
plots into the run dir.
Evaluations run as `searchrl eval` subprocesses so each vLLM engine's memory is returned before the next starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from searchrl.config import Config, dump_config
from searchrl.evaluate import MODES
from searchrl.preflight import last_error, missing_inputs
from searchrl.proc import die_with_parent
from searchrl.world import generate_world, write_world


def demo_config_file(protocol: str | None) -> str:
    """The demo config of `protocol` (None: R1-Searcher's configs/demo-cpu.yaml)."""
    return (
        "configs/demo-cpu.yaml" if protocol in (None, "r1searcher") else f"configs/demo-cpu-{protocol}.yaml"
    )


def prepare_world(cfg: Config, seed: int, n_test: int) -> dict[str, Path]:
    d = Path(cfg.model.cache_dir).expanduser() / f"world-seed{seed}"
    names = ("corpus", "stage1", "stage2", "test")
    if not all((d / f"{n}.jsonl").is_file() for n in names):
        print(f"generating the world into {d}", flush=True)
        write_world(d, generate_world(seed), seed, n_test)
    return {n: d / f"{n}.jsonl" for n in names}


def pin_two_cores(cfg: Config, cpus: set[int]) -> bool:
    """On a box with exactly two usable cores and no `run.cpu_affinity` set, give the learner the second core and
    everything else (vLLM, retriever, reward) the first: with `trainer.max_staleness` > 0 the rollout side would
    otherwise slow every learner step (bench/results/async-vs-sync-pinned-cpu.md). True when it pinned."""
    aff = cfg.run.cpu_affinity
    if len(cpus) != 2 or any((aff.trainer, aff.rollout, aff.retriever, aff.reward)):
        return False
    first, last = (str(c) for c in sorted(cpus))
    aff.trainer, aff.rollout, aff.retriever, aff.reward = last, first, first, first
    if cfg.rollout.cpu_threads_bind in ("", "auto"):
        cfg.rollout.cpu_threads_bind = first
    return True


def demo_config(
    cfg: Config, world: dict[str, Path], run_dir: Path, steps: int | None, minutes: float | None
) -> Config:
    cfg = cfg.model_copy(deep=True)
    cfg.run.run_dir = str(run_dir)
    cfg.retriever.corpus = str(world["corpus"])
    cfg.retriever.index_dir = str(world["corpus"].parent / "index")
    if steps is not None:
        cfg.trainer.max_steps = steps
    if minutes is not None:
        cfg.trainer.max_minutes = minutes
    stage1, stage2 = cfg.trainer.stages[0], cfg.trainer.stages[-1]
    stage1.data, stage2.data = str(world["stage1"]), str(world["stage2"])
    if len(cfg.trainer.stages) > 1 and steps is not None:
        stage1.steps = max(1, steps // 2)  # R1-Searcher: stage 1 teaches to search, stage 2 to answer well
    return cfg


def run_eval(
    config_path: Path, models: list[str], data: Path, out: Path, modes: list[str], limit: int
) -> dict[str, dict]:
    """`searchrl eval` in a subprocess (its vLLM memory is freed on exit); results per model folder name."""
    cmd = [
        sys.executable,
        "-m",
        "searchrl.cli",
        "eval",
        "-c",
        str(config_path),
        "--data",
        str(data),
        "--out",
        str(out),
        "--limit",
        str(limit),
    ]
    for m in models:
        cmd += ["--model", m]
    for m in modes:
        cmd += ["--mode", m]
    out.mkdir(parents=True, exist_ok=True)
    log = out / "eval.log"
    names = ", ".join(Path(m).name for m in models)
    print(f"evaluating {names} on {limit} held-out questions ({', '.join(modes)}); log: {log}", flush=True)
    t0 = time.monotonic()
    with log.open("ab") as f:  # the engines' own logging stays out of the console
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, preexec_fn=die_with_parent).returncode
    if rc != 0:
        raise RuntimeError(f"searchrl eval exited with status {rc}: {last_error(log)} (log: {log})")
    print(f"  done in {time.monotonic() - t0:.0f}s", flush=True)
    if len(models) == 1:
        return {Path(models[0]).name: json.loads((out / "results.json").read_text())["results"]}
    return {
        Path(m).name: json.loads((out / Path(m).name / "results.json").read_text())["results"] for m in models
    }


def _line_plot(path: Path, xs: list, ys: list, title: str, marker: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(xs, ys, marker=marker)
    ax.set_xlabel("step")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(run_dir: Path, curve: list[tuple[int, float]]) -> list[Path]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in lines]
    out = [
        _line_plot(run_dir / f"{key}.png", steps, [m[key] for m in lines], title, ".")
        for key, title in (
            ("reward_mean", "reward (train batch)"),
            ("num_searches_mean", "searches per rollout"),
            ("response_len_mean", "response length (tokens)"),
        )
    ]
    if curve:
        xs, ys = [s for s, _ in curve], [c for _, c in curve]
        out.append(
            _line_plot(run_dir / "heldout_cem.png", xs, ys, "held-out CEM (search agent, greedy)", "o")
        )
    return out


def report(
    run_dir: Path,
    before: dict,
    after: dict,
    curve: list[tuple[int, float]],
    wall_s: float,
    seed: int,
    protocol: str = "r1searcher",
) -> str:
    rows = [
        "| mode | model | EM | CEM | F1 | CEM in text | searches |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, res in (("untrained", before), ("after RL", after)):
        for mode in (x for x in MODES if x in res):
            m = res[mode]["all"]
            rows.append(
                f"| {mode} | {label} | {m['em']:.3f} | {m['cem']:.3f} | {m['f1']:.3f} | "
                f"{m['cem_text']:.3f} | {m['searches']:.2f} |"
            )
    types = [t for t in after["search-agent"] if t != "all"]
    by_type = ["| search agent CEM | " + " | ".join(types) + " |", "|---|" + "---|" * len(types)]
    for label, res in (("untrained", before), ("after RL", after)):
        agent = res["search-agent"]
        by_type.append(f"| {label} | " + " | ".join(f"{agent[t]['cem']:.3f}" for t in types) + " |")
    gain = after["search-agent"]["all"]["cem"] - before["search-agent"]["all"]["cem"]
    text = "\n".join(
        [
            "# searchrl demo report",
            "",
            f"protocol {protocol}, seed {seed}, wall time {wall_s / 60:.1f} min, held-out CEM gain of the "
            "search agent: "
            f"{100 * gain:+.1f} points",
            "",
            *rows,
            "",
            "CEM scores the text inside <answer></answer> (R1-Searcher's metric; ReSearch: the \\boxed{} "
            "content in there). 'CEM in text' looks for the "
            "gold answer anywhere in the model's own words (documents excluded), so it credits right answers "
            "given in prose; for comparison questions it is met whenever both names are repeated.",
            "",
            *by_type,
            "",
            "Held-out CEM over training: " + ", ".join(f"step {s}: {c:.3f}" for s, c in curve),
            "",
            "![reward](reward_mean.png) ![searches](num_searches_mean.png) ![length](response_len_mean.png) "
            "![cem](heldout_cem.png)",
            "",
        ]
    )
    (run_dir / "report.md").write_text(text)
    (run_dir / "results.json").write_text(
        json.dumps(
            {
                "before": before,
                "after": after,
                "curve": curve,
                "gain_cem": gain,
                "wall_s": wall_s,
                "seed": seed,
                "protocol": protocol,
            },
            indent=1,
        )
    )
    return text


def demo(
    cfg: Config,
    steps: int | None,
    minutes: float | None,
    run_dir: Path,
    n_eval: int = 100,
    curve: bool = False,
    baselines: bool = False,
) -> int:
    """The whole demo; 1 with the reason (and the log to read) when an evaluation fails. `curve` also evaluates
    the exports made during training (`hf/step_N`, one held-out evaluation each) for the CEM curve; `baselines`
    also evaluates the untrained model without retrieval and with naive RAG (~2 min on 2 cores)."""
    try:
        return _demo(cfg, steps, minutes, run_dir, n_eval, curve, baselines)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1


def _export_step(export: Path) -> int:
    """The training step of an export folder (`hf/step_N` -> N)."""
    return int(export.name.split("_")[1])


def _demo(
    cfg: Config,
    steps: int | None,
    minutes: float | None,
    run_dir: Path,
    n_eval: int,
    curve: bool,
    baselines: bool,
) -> int:
    from searchrl.launcher import up
    from searchrl.models import resolve_model

    t0 = time.monotonic()
    seed = cfg.run.seed
    missing = [m for m in missing_inputs(cfg) if not m.startswith(("retriever.corpus", "trainer.stages"))]
    if missing:  # the demo writes its own world (corpus and questions); the rest must exist before it starts
        print(f"error: {cfg.source}: nothing started, inputs missing:", file=sys.stderr)
        print("\n".join(f"  {m}" for m in missing), file=sys.stderr, flush=True)
        return 2
    world = prepare_world(cfg, seed, n_test=max(300, n_eval))
    print("preparing the model (converted once, then cached)", flush=True)
    resolve_model(cfg.model.path, cfg.model.cache_dir, seed)
    cfg = demo_config(cfg, world, run_dir, steps, minutes)
    if pin_two_cores(cfg, os.sched_getaffinity(0)):
        aff = cfg.run.cpu_affinity
        print(
            f"2 cores: the learner runs on core {aff.trainer}, generation, retrieval and reward on core {aff.rollout}"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "demo-config.yaml"
    config_path.write_text(dump_config(cfg))
    before = next(
        iter(
            run_eval(
                config_path,
                [cfg.model.path],
                world["test"],
                run_dir / "eval-before",
                list(MODES) if baselines else ["search-agent"],
                n_eval,
            ).values()
        )
    )
    rc = up(cfg)
    if rc != 0:
        return rc
    hf = run_dir / "hf"
    final_step = len((run_dir / "metrics.jsonl").read_text().splitlines())
    exports = (d for d in hf.glob("step_*") if _export_step(d) != final_step)
    steps_dirs = sorted(exports, key=_export_step) if curve else []
    # the trained policy in the search agent's mode only; with --curve the exports before it in the same engine
    after = run_eval(
        config_path,
        [*map(str, steps_dirs), str(hf / "final")],
        world["test"],
        run_dir / "eval-after",
        ["search-agent"],
        n_eval,
    )
    points = [(0, before["search-agent"]["all"]["cem"])]
    points += [(_export_step(d), after[d.name]["search-agent"]["all"]["cem"]) for d in steps_dirs]
    after = after["final"]
    points.append((final_step, after["search-agent"]["all"]["cem"]))
    plot(run_dir, points)
    wall_s = time.monotonic() - t0
    print(report(run_dir, before, after, points, wall_s, seed, cfg.rollout.protocol), flush=True)
    print(f"trained model: {hf / 'final'}\nreport: {run_dir / 'report.md'}", flush=True)
    return 0

"""Where the learner's step time goes, on the real policy (SmolLM2-135M by default), with ratios measured in
this process:

1. padding: response log-probs over micro-batches trimmed to their own length (rows grouped by length) vs the
   same micro-batches at the whole batch's padded width;
2. the "old" log-prob pass: the no-grad forward the learner no longer runs when the advantages do not need it
   (it reuses the training forward's own log-probs), as a share of a train step;
3. `trainer.train_layers`: a train step with only the top N decoder layers trainable vs the whole model;
4. `trainer.world_size`: a train step of the same batch on 2 gloo ranks vs 1 (each world size in a process of
   its own, started through `dist.launch` as the trainer service does; the CPU cores are split between ranks);
5. `trainer.shared_prefix`: a train step whose groups share their prompt (the demo's ~550-token few-shot prompt,
   `--prompt-len`), with the prompt run once per micro-batch vs once per row (the demo's settings:
   `train_layers` 8, micro-batch 4 = one group).

Trajectories are synthetic with demo-like lengths (prompt ~110 tokens, responses 40-380 with document spans).
Usage: python bench/learner_step.py [--model builtin:smollm2-135m-instruct] [--layers 10] [--rows 16]
       [--only-ranks] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from searchrl.config import Config, TrainerConfig
from searchrl.models import resolve_model
from searchrl.records import Trajectory
from searchrl_trainer.dist import launch
from searchrl_trainer.learner import Batch, Learner, collate


def trajectories(rows: int, group: int, seed: int = 0, prompt_len: int = 0) -> list[Trajectory]:
    """Demo-like rows; `prompt_len` > 0: every group's rows share one prompt of that length (as the rollout
    writes them), else each row has its own of 95-125 tokens."""
    rng = np.random.default_rng(seed)
    out = []
    shared = None
    for i in range(rows):
        p, r = int(rng.integers(95, 125)), int(rng.integers(40, 380))
        if prompt_len and i % group == 0:
            shared = rng.integers(10, 40000, prompt_len).astype(np.int32)
        mask = np.ones(r, np.uint8)
        if r > 120:  # one inserted document span
            mask[60 : 60 + min(90, r - 80)] = 0
        out.append(
            Trajectory(
                f"t{i // group}/{i % group}",
                f"t{i // group}",
                i % group,
                group,
                0,
                shared if prompt_len else rng.integers(10, 40000, p).astype(np.int32),
                rng.integers(10, 40000, r).astype(np.int32),
                mask,
                np.full(r, -1.0, np.float32),
                float(rng.choice([-1.0, 0.5, 1.0])),
            )
        )
    return out


def best_of(n: int, fn) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def untrimmed(b: Batch, idx: torch.Tensor) -> Batch:
    return Batch(
        b.input_ids[idx],
        b.attention_mask[idx],
        b.position_ids[idx],
        b.response_ids[idx],
        b.mask[idx],
        b.behaviour_logprobs[idx],
        b.rewards[idx],
        b.prompt_len,
    )


def ranks_worker(args: argparse.Namespace, path: str) -> None:
    """Part 4, one world size (this process is rank 0 and starts the others): best step time as JSON."""
    cores = os.cpu_count() or 1
    cfg = Config(
        trainer=TrainerConfig(
            group_size=args.group,
            groups_per_step=args.rows // args.group,
            micro_batch_size=4,
            lr=1e-7,
            world_size=args.world_size,
            cpu_threads=max(1, cores // args.world_size),
        )
    )
    learner = launch(cfg, path)
    trajs = trajectories(args.rows, args.group)
    learner.train_step(trajs)  # warm-up
    print(
        json.dumps({"world_size": args.world_size, "step_s": best_of(2, lambda: learner.train_step(trajs))})
    )


def compare_ranks(args: argparse.Namespace) -> dict:
    steps = {}
    for ws in (1, 2):
        cmd = [
            sys.executable,
            __file__,
            "--model",
            args.model,
            "--rows",
            str(args.rows),
            "--group",
            str(args.group),
        ]
        out = subprocess.run(
            [*cmd, "--world-size", str(ws)], check=True, capture_output=True, text=True
        ).stdout
        steps[ws] = json.loads(out.strip().splitlines()[-1])["step_s"]
    print(
        f"4. world_size 2 vs 1 (gloo, {os.cpu_count()} CPU cores split between the ranks): step "
        f"{steps[2]:.2f} s vs {steps[1]:.2f} s -> {steps[1] / steps[2]:.2f}x",
        flush=True,
    )
    return {
        "rows": args.rows,
        "step_s_1_rank": steps[1],
        "step_s_2_ranks": steps[2],
        "speedup": steps[1] / steps[2],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--layers", type=int, default=10, help="train_layers for part 3")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--only-ranks", action="store_true", help="run part 4 only")
    ap.add_argument("--only-shared", action="store_true", help="run part 5 only")
    ap.add_argument("--prompt-len", type=int, default=550, help="the shared prompt of part 5")
    ap.add_argument("--out", help="write part 4's numbers as JSON here")
    ap.add_argument("--world-size", type=int, help=argparse.SUPPRESS)  # part 4's worker processes
    args = ap.parse_args()
    path = resolve_model(args.model, "~/.cache/searchrl/models", 0)
    if args.world_size:
        return ranks_worker(args, path)
    if args.only_shared:
        return print(json.dumps(shared_prefix(args, path)))
    if not args.only_ranks:
        parts_1_to_3(args, path)
    result = compare_ranks(args)
    if not args.only_ranks:
        result["shared_prefix"] = shared_prefix(args, path)
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")


def parts_1_to_3(args: argparse.Namespace, path: str) -> None:
    trajs = trajectories(args.rows, args.group)
    cfg = TrainerConfig(
        group_size=args.group, groups_per_step=args.rows // args.group, micro_batch_size=4, lr=1e-7
    )
    learner = Learner(cfg, path)
    b = collate(trajs, learner.pad_id)
    model = learner.engine.module

    def logprob_pass(trim: bool) -> None:
        with torch.no_grad():
            for idx in b.micro_batches(learner.micro):
                learner._response_logits(model, b.rows(idx) if trim else untrimmed(b, idx))

    t_full = best_of(2, lambda: logprob_pass(False))
    t_trim = best_of(2, lambda: logprob_pass(True))
    print(
        f"1. no-grad log-prob pass over {args.rows} rows: padded width {t_full:.2f} s, trimmed {t_trim:.2f} s "
        f"-> trimming is {t_full / t_trim:.2f}x faster",
        flush=True,
    )

    learner.train_step(trajs)  # warm-up
    t_step = best_of(2, lambda: learner.train_step(trajs))
    print(
        f"2. train step {t_step:.2f} s; the dropped old-log-prob pass would add {t_trim:.2f} s "
        f"-> the step is {(t_step + t_trim) / t_step:.2f}x faster without it",
        flush=True,
    )

    frozen = Learner(cfg.model_copy(update={"train_layers": args.layers}), path)
    frozen.train_step(trajs)
    t_frozen = best_of(2, lambda: frozen.train_step(trajs))
    n_layers = len(frozen.engine.module.get_decoder().layers)
    print(
        f"3. train_layers={args.layers} of {n_layers}: step {t_frozen:.2f} s vs all layers {t_step:.2f} s "
        f"-> {t_step / t_frozen:.2f}x faster",
        flush=True,
    )


def shared_prefix(args: argparse.Namespace, path: str) -> dict:
    trajs = trajectories(args.rows, args.group, prompt_len=args.prompt_len)
    times = {}
    for on in (False, True):
        cfg = TrainerConfig(
            group_size=args.group,
            groups_per_step=args.rows // args.group,
            micro_batch_size=args.group,
            lr=1e-7,
            train_layers=8,
            shared_prefix=on,
        )
        learner = Learner(cfg, path)
        learner.train_step(trajs)  # warm-up
        times[on] = best_of(2, lambda lr=learner: lr.train_step(trajs))
        del learner
    print(
        f"5. shared prefix ({args.prompt_len}-token prompt per group of {args.group}): step {times[True]:.2f} s vs "
        f"{times[False]:.2f} s once per row -> {times[False] / times[True]:.2f}x faster",
        flush=True,
    )
    return {
        "prompt_len": args.prompt_len,
        "rows": args.rows,
        "shared_s": times[True],
        "per_row_s": times[False],
    }


if __name__ == "__main__":
    main()

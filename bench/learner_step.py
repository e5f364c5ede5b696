"""Where the learner's step time goes, on the real policy (SmolLM2-135M by default), with ratios measured in
this process:

1. padding: response log-probs over micro-batches trimmed to their own length (rows grouped by length) vs the
   same micro-batches at the whole batch's padded width;
2. the "old" log-prob pass: the no-grad forward the learner no longer runs when the advantages do not need it
   (it reuses the training forward's own log-probs), as a share of a train step;
3. `trainer.train_layers`: a train step with only the top N decoder layers trainable vs the whole model.

Trajectories are synthetic with demo-like lengths (prompt ~110 tokens, responses 40-380 with document spans).
Usage: python bench/learner_step.py [--model builtin:smollm2-135m-instruct] [--layers 10] [--rows 16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from searchrl.config import TrainerConfig
from searchrl.models import resolve_model
from searchrl.records import Trajectory
from searchrl_trainer.learner import Batch, Learner, collate


def trajectories(rows: int, group: int, seed: int = 0) -> list[Trajectory]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(rows):
        p, r = int(rng.integers(95, 125)), int(rng.integers(40, 380))
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
                rng.integers(10, 40000, p).astype(np.int32),
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--layers", type=int, default=10, help="train_layers for part 3")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--group", type=int, default=4)
    args = ap.parse_args()
    path = resolve_model(args.model, "~/.cache/searchrl/models", 0)
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


if __name__ == "__main__":
    main()

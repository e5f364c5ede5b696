"""Pushed weight sync against the pull path, into the same running vLLM engine, in one run.

One AsyncLLM engine of the model (SmolLM2-135M by default) that accepts pushes (`searchrl-gloo`, the CPU twin of
vLLM's NCCL backend); the trainer's side is this process. Alternating REPS times, the same weights (the model's
own, in the rollout dtype):
1. push: `trainer_engine(...).send_weights()` - vLLM's start / update (bucketed gloo broadcasts) / finish, the
   engine reloading layer by layer in place (what `trainer.weight_sync: gloo|nccl` does each step);
2. pull: `pull_weights` from a `GetWeights` server in its own process (chunked, sha256-checked, written to a
   folder), then the engine's `reload_weights` from that folder (what `trainer.weight_sync: grpc` does).
Prints the best times and the median over the pairs of pull time / push time. Usage:
  python bench/weight_push.py [--model builtin:smollm2-135m-instruct] [--reps 5] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from searchrl.config import RolloutConfig, SecurityConfig
from searchrl.grpcutil import Server, channel, retrying
from searchrl.loopthread import LoopThread
from searchrl.models import resolve_model
from searchrl.proto import trainer_pb2_grpc
from searchrl.redisio import free_port
from searchrl.weight_transfer import GLOO, LocalWeightSyncClient, StateSource, trainer_engine
from searchrl.weightsync import WeightStore, pull_weights, serialize_state_dict
from searchrl_rollout.async_engine import AsyncVllmEngine
from searchrl_trainer.server import TrainerServicer


def serve(path: str, port: int, stop: mp.Event) -> None:
    """The trainer's GetWeights stream of the model's weights, in a process of its own."""
    store = WeightStore(4 << 20)
    store.publish(1, serialize_state_dict(load_file(f"{path}/model.safetensors"), torch.float32, set()))
    server = Server(port, 0, 4, SecurityConfig())
    server.add(trainer_pb2_grpc.add_TrainerServicer_to_server, TrainerServicer(None, store), "t")
    server.start()
    stop.wait()
    server.stop(0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--bucket-mib", type=int, default=32, help="the gloo backend's default")
    ap.add_argument("--out")
    args = ap.parse_args()
    path = resolve_model(args.model)
    state = {k: v.float() for k, v in load_file(f"{path}/model.safetensors").items()}
    mb = sum(v.numel() * v.element_size() for v in state.values()) / 1e6
    loop = LoopThread()

    async def start() -> AsyncVllmEngine:
        return AsyncVllmEngine.from_config(path, RolloutConfig(max_model_len=1024), 0, weight_transfer=GLOO)

    engine = loop.run(start())
    ctx = mp.get_context("spawn")
    port, stop = free_port(), ctx.Event()
    proc = ctx.Process(target=serve, args=(path, port, stop))
    proc.start()
    tmp = Path(tempfile.mkdtemp())
    try:
        stub = trainer_pb2_grpc.TrainerStub(channel(f"127.0.0.1:{port}", SecurityConfig()))
        retrying(lambda: pull_weights(stub, 1, tmp / "warm"), attempts=20, delay=0.5)
        sender = trainer_engine(
            GLOO,
            LocalWeightSyncClient(loop.run, engine),
            StateSource(state),
            "127.0.0.1",
            free_port(),
            2,
            args.bucket_mib << 20,
        )

        def push() -> float:
            t0 = time.perf_counter()
            sender.send_weights()
            return time.perf_counter() - t0

        def pull() -> float:
            t0 = time.perf_counter()
            _, _, folder = pull_weights(stub, 1, tmp / "pulled")
            loop.run(engine.load_weights(folder))
            dt = time.perf_counter() - t0
            shutil.rmtree(folder)
            return dt

        push(), pull()  # warm-up
        pairs = [(push(), pull()) for _ in range(args.reps)]
        sender.shutdown()
    finally:
        stop.set()
        proc.join(30)
        engine.shutdown()
    push_s, pull_s = min(p[0] for p in pairs), min(p[1] for p in pairs)
    ratio = statistics.median(b / a for a, b in pairs)
    print(
        f"{mb:.0f} MB ({args.model}, float32): push {push_s:.2f}s, pull + reload {pull_s:.2f}s -> push "
        f"{ratio:.2f}x faster (median of {args.reps} alternating pairs)",
        flush=True,
    )
    if args.out:
        out = {
            "model": args.model,
            "mb": mb,
            "pairs": pairs,
            "push_s": push_s,
            "pull_s": pull_s,
            "ratio": ratio,
        }
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

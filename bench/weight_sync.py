"""Weight sync over the general path: serialise -> chunked gRPC stream -> local file, for a SmolLM2-135M-sized
bf16 state dict. Baselines in the same process: writing the same bytes to a local file (the floor), and the
stream with 1 MiB / 16 MiB chunks against the default 4 MiB. Usage: python bench/weight_sync.py [MPARAMS]"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from searchrl.config import SecurityConfig
from searchrl.grpcutil import Server, channel
from searchrl.proto import trainer_pb2_grpc
from searchrl.redisio import free_port
from searchrl.weightsync import WeightStore, pull_weights, serialize_state_dict
from searchrl_trainer.server import TrainerServicer


def state_dict(mparams: float) -> dict[str, torch.Tensor]:
    hidden, n = 576, int(mparams * 1e6 / (576 * 576))  # SmolLM2-135M: hidden 576
    return {f"layers.{i}.weight": torch.randn(576, hidden) for i in range(n)}


def main() -> None:
    mparams = float(sys.argv[1]) if len(sys.argv) > 1 else 135
    sd = state_dict(mparams)
    t0 = time.perf_counter()
    payload = serialize_state_dict(sd, torch.bfloat16, set())
    ser_s = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    (tmp / "floor.bin").write_bytes(payload)
    floor_s = time.perf_counter() - t0
    print(f"payload {len(payload) / 1e6:.0f} MB (bf16), serialise {ser_s:.2f}s, local write {floor_s:.3f}s")
    results = {}
    for chunk in (256 << 10, 1 << 20, 4 << 20, 16 << 20):
        store = WeightStore(chunk)
        store.publish(1, payload)
        server = Server(free_port(), 0, 4, SecurityConfig())
        server.add(trainer_pb2_grpc.add_TrainerServicer_to_server, TrainerServicer(None, store), "t")
        server.start()
        stub = trainer_pb2_grpc.TrainerStub(channel(f"127.0.0.1:{server.port}", SecurityConfig()))
        pull_weights(stub, 1, tmp / "warm")
        times = []
        for rep in range(3):  # best of 3: the machine is noisy
            t0 = time.perf_counter()
            pull_weights(stub, 1, tmp / f"c{chunk}-{rep}")
            times.append(time.perf_counter() - t0)
        results[chunk] = min(times)
        server.stop(0)
    base = results[4 << 20]
    for chunk, s in results.items():
        print(
            f"pull {chunk / 2**20:>5.2f} MiB chunks: {s:.2f}s  {len(payload) / s / 1e6:6.0f} MB/s  "
            f"vs local write x{s / floor_s:.1f}  vs 4 MiB x{s / base:.2f}"
        )


if __name__ == "__main__":
    main()

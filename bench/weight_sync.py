"""Weight sync over the general path against a raw loopback copy of the same bytes, in one run.

For a SmolLM2-135M-sized bf16 state dict (or MPARAMS million parameters): serialise once, then, alternating
(so that load from other processes hits both alike), REPS times each of
1. raw: the payload sent over a loopback TCP socket and written to a local file by the receiver (the floor any
   network path pays: one copy through the kernel plus the file write);
2. gRPC: `pull_weights` from the trainer's `GetWeights` stream (chunked, sha256-checked, written to a file), at
   each chunk size given; the server runs in a process of its own, as the trainer does.
Prints the best times, MB/s and the median over the alternating pairs of the speed ratio gRPC / raw (issue 11's
goal: >= 0.5). Usage:
  python bench/weight_sync.py [--mparams 135] [--chunks-mib 4 16] [--out bench/results/weight-sync.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from searchrl.config import SecurityConfig
from searchrl.grpcutil import Server, channel, retrying
from searchrl.proto import trainer_pb2_grpc
from searchrl.redisio import free_port
from searchrl.weightsync import WeightStore, pull_weights, serialize_state_dict
from searchrl_trainer.server import TrainerServicer

_RECV = 4 << 20


def state_dict(mparams: float) -> dict[str, torch.Tensor]:
    hidden, n = 576, int(mparams * 1e6 / (576 * 576))  # SmolLM2-135M: hidden 576
    g = torch.Generator().manual_seed(0)  # the server process makes the same bytes
    return {f"layers.{i}.weight": torch.randn(576, hidden, generator=g) for i in range(n)}


def payload_of(mparams: float) -> bytes:
    return serialize_state_dict(state_dict(mparams), torch.bfloat16, set())


def timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def raw_copy(payload: bytes, path: Path) -> None:
    """Send `payload` over a loopback socket; the receiver writes what it gets to `path`."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        sender = threading.Thread(target=_send, args=(port, payload))
        sender.start()
        conn, _ = srv.accept()
        buf = bytearray(_RECV)
        view = memoryview(buf)
        with conn, open(path, "wb") as f:
            while n := conn.recv_into(view):
                f.write(view[:n])
        sender.join()
    assert os.path.getsize(path) == len(payload)


def _send(port: int, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(payload)


def serve_weights(mparams: float, chunk: int, port: int, stop: mp.Event) -> None:
    store = WeightStore(chunk)
    store.publish(1, payload_of(mparams))
    server = Server(port, 0, 4, SecurityConfig())
    server.add(trainer_pb2_grpc.add_TrainerServicer_to_server, TrainerServicer(None, store), "t")
    server.start()
    stop.wait()
    server.stop(0)


def pairs(mparams: float, payload: bytes, chunk: int, tmp: Path, reps: int) -> list[tuple[float, float]]:
    """(raw seconds, gRPC seconds) measured back to back, `reps` times."""
    ctx = mp.get_context("spawn")
    port, stop = free_port(), ctx.Event()
    proc = ctx.Process(target=serve_weights, args=(mparams, chunk, port, stop))
    proc.start()
    try:
        stub = trainer_pb2_grpc.TrainerStub(channel(f"127.0.0.1:{port}", SecurityConfig()))
        retrying(lambda: pull_weights(stub, 1, tmp / "warm"), attempts=8, delay=0.5)
        return [
            (
                timed(lambda: raw_copy(payload, tmp / "raw.bin")),
                timed(lambda: pull_weights(stub, 1, tmp / "c")),
            )
            for _ in range(reps)
        ]
    finally:
        stop.set()
        proc.join(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mparams", type=float, default=135)
    ap.add_argument("--chunks-mib", type=float, nargs="+", default=[4, 16])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", help="also write the numbers as JSON here")
    args = ap.parse_args()
    payload = payload_of(args.mparams)
    mb = len(payload) / 1e6
    tmp = Path(tempfile.mkdtemp())
    print(f"payload {mb:.0f} MB (bf16), {args.reps} alternating pairs per chunk size", flush=True)
    results: dict = {"payload_mb": mb, "reps": args.reps, "chunks": {}}
    for mib in args.chunks_mib:
        ps = pairs(args.mparams, payload, int(mib * 2**20), tmp, args.reps)
        raw_s, grpc_s = min(p[0] for p in ps), min(p[1] for p in ps)
        ratio = statistics.median(r / g for r, g in ps)
        results["chunks"][f"{mib:g}MiB"] = {"raw_s": raw_s, "grpc_s": grpc_s, "median_ratio": ratio}
        print(
            f"{mib:g} MiB chunks: raw loopback {raw_s:.2f}s = {mb / raw_s:.0f} MB/s, gRPC {grpc_s:.2f}s = "
            f"{mb / grpc_s:.0f} MB/s -> gRPC at {ratio:.2f}x the raw copy's speed (median of pairs)",
            flush=True,
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Trajectory wire format: raw-bytes arrays (ours) vs JSON lists (baseline), codec only and through Redis.

Prints times and the speed-up ratio measured in this process. Usage: python bench/trajectory_codec.py [N] [T]
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict

import numpy as np

from searchrl.records import Trajectory
from searchrl.redisio import EmbeddedRedis, connect


def make(n: int, t: int) -> list[Trajectory]:
    rng = np.random.default_rng(0)
    return [
        Trajectory(
            f"task{i}/0",
            f"task{i}",
            0,
            16,
            3,
            rng.integers(0, 49152, 300).astype(np.int32),
            rng.integers(0, 49152, t).astype(np.int32),
            (rng.random(t) > 0.3).astype(np.uint8),
            -rng.random(t).astype(np.float32),
            1.0,
            {"cem": 1.0},
        )
        for i in range(n)
    ]


def json_encode(tr: Trajectory) -> dict[str, str]:
    d = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(tr).items()}
    return {"json": json.dumps(d)}


def json_decode(fields: dict) -> Trajectory:
    d = json.loads(fields[b"json"] if b"json" in fields else fields["json"])
    for k, dt in (
        ("prompt_ids", np.int32),
        ("response_ids", np.int32),
        ("loss_mask", np.uint8),
        ("logprobs", np.float32),
    ):
        d[k] = np.asarray(d[k], dt)
    return Trajectory(**d)


def timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    t = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    trajs = make(n, t)
    enc_b = [x.encode() for x in trajs]
    enc_j = [json_encode(x) for x in trajs]
    size_b = sum(len(v) for e in enc_b for v in e.values())
    size_j = sum(len(v) for e in enc_j for v in e.values())
    codec_b = timed(lambda: [Trajectory.decode(x.encode()) for x in trajs])
    codec_j = timed(lambda: [json_decode(json_encode(x)) for x in trajs])

    server = EmbeddedRedis.start()
    r = connect(server.url)
    try:

        def roundtrip(encode, decode, stream: str) -> None:  # noqa: ANN001
            with r.pipeline(transaction=False) as p:
                for x in trajs:
                    p.xadd(stream, encode(x))
                p.execute()
            [decode(f) for _, f in r.xrange(stream)]

        redis_j = timed(lambda: roundtrip(json_encode, json_decode, "bench_json"))
        redis_b = timed(lambda: roundtrip(lambda x: x.encode(), Trajectory.decode, "bench_bytes"))
    finally:
        server.stop()
    print(f"trajectories: {n} x {t} response tokens")
    print(
        f"size      bytes {size_b / 1e6:7.1f} MB   json {size_j / 1e6:7.1f} MB   ratio {size_j / size_b:5.1f}x smaller"
    )
    print(
        f"codec     bytes {codec_b:7.3f} s    json {codec_j:7.3f} s    ratio {codec_j / codec_b:5.1f}x faster"
    )
    print(
        f"via redis bytes {redis_b:7.3f} s    json {redis_j:7.3f} s    ratio {redis_j / redis_b:5.1f}x faster"
    )


if __name__ == "__main__":
    main()

"""pull_weights over a real GetWeights stream: many chunks (more than the writer's queue holds) arrive in order,
hashed and written by the sink thread; the folder holds exactly the published bytes."""

from __future__ import annotations

import os
from pathlib import Path

from searchrl.config import SecurityConfig
from searchrl.grpcutil import Server, channel
from searchrl.proto import trainer_pb2_grpc
from searchrl.redisio import free_port
from searchrl.weightsync import WEIGHTS_FILE, WeightStore, pull_weights
from searchrl_trainer.server import TrainerServicer


def test_pull_writes_every_chunk_in_order(tmp_path: Path) -> None:
    payload = os.urandom(3 << 20)
    store = WeightStore(64 << 10)  # 48 chunks
    pub = store.publish(7, payload)
    server = Server(free_port(), 0, 2, SecurityConfig())
    server.add(trainer_pb2_grpc.add_TrainerServicer_to_server, TrainerServicer(None, store), "t")
    server.start()
    try:
        stub = trainer_pb2_grpc.TrainerStub(channel(f"127.0.0.1:{server.port}", SecurityConfig()))
        version, sha, folder = pull_weights(stub, 5, tmp_path)
    finally:
        server.stop(0)
    assert (version, sha) == (7, pub.sha256)
    assert (Path(folder) / WEIGHTS_FILE).read_bytes() == payload
    assert [p.name for p in tmp_path.iterdir()] == [Path(folder).name]  # no partial folder left behind

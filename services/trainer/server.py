"""Trainer gRPC server: builds the learner (all its ranks, `dist.py`) and the loop, serves weights and status.

On a node other than 0 of a multi-node learner there is no loop and no Trainer API: `serve` serves only
grpc.health (for the probes), follows rank 0 and exits when rank 0 stops it (SystemExit 0).
"""

from __future__ import annotations

import logging

from searchrl import queue_metrics, redisio
from searchrl.config import Config
from searchrl.grpcutil import Server, StreamLimit, rpc
from searchrl.models import resolve_model
from searchrl.proto import common_pb2, trainer_pb2, trainer_pb2_grpc
from searchrl.weightsync import WeightStore
from searchrl_trainer import dist
from searchrl_trainer.loop import TrainerLoop

log = logging.getLogger(__name__)


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, loop: TrainerLoop, store: WeightStore, max_streams: int = 4) -> None:
        self.loop = loop
        self.store = store
        # Each stream holds a server thread for the whole transfer: cap them (the pullers retry any error).
        self.streams = StreamLimit(max_streams, "trainer.max_weight_streams")

    def GetWeights(self, request, context):  # noqa: N802 - gRPC method name (server streaming)
        import grpc

        if request.min_version < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "min_version: must be >= 0")
        self.streams.enter(context)
        try:
            chunks = self.store.chunks(request.min_version)
            first = next(chunks)
        except LookupError as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        yield first
        yield from chunks

    @rpc("trainer")
    def GetStatus(self, request, context):  # noqa: N802
        loop, st = self.loop, self.loop.state
        pub = self.store.current
        waiting = loop.waiting_s()
        return trainer_pb2.TrainerStatus(
            step=st.step,
            done=st.done,
            trained_trajectories=st.trained_trajectories,
            dropped_groups=st.dropped_groups,
            policy=common_pb2.PolicyInfo(
                version=pub.version if pub else -1, weights_sha256=pub.sha256 if pub else ""
            ),
            checkpoint_step=loop.saved_step,
            waiting_s=waiting,
            groups_ready=len(loop.ready),
            groups_needed=loop.tc.groups_per_step,
            stalled=loop.wait.stalled,
            outstanding_tasks=len(loop.out),
        )


def serve(cfg: Config, redis_url: str) -> tuple[Server, TrainerLoop]:
    """Build learner + loop, restore, publish, start the server; the caller runs `loop.run()`."""
    model_path = resolve_model(cfg.model.path, cfg.model.cache_dir, cfg.run.seed)
    store = WeightStore(cfg.trainer.weight_chunk_bytes)
    learner = dist.launch(cfg, model_path)
    t = cfg.trainer
    server = Server(t.port, t.metrics_port, t.workers, cfg.security, t.health_port)
    if isinstance(learner, tuple):  # a rank of another node: only health, until rank 0 says stop
        server.start()
        dist.follow(*learner)
        server.stop()
        raise SystemExit(0)
    loop = TrainerLoop(cfg, learner, redisio.connect(redis_url), store)
    queue_metrics.register(loop.r, cfg.streams)
    loop.restore()
    server.add(
        trainer_pb2_grpc.add_TrainerServicer_to_server,
        TrainerServicer(loop, store, t.max_weight_streams),
        "searchrl.v1.Trainer",
    )
    server.start()
    return server, loop

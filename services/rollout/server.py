"""Rollout gRPC server: builds the engine, tokenizer and clients, serves status/sync RPCs, runs the worker loop."""

from __future__ import annotations

import logging

from searchrl import redisio
from searchrl.config import Config
from searchrl.grpcutil import Server, channel, retrying, rpc
from searchrl.models import resolve_model
from searchrl.proto import (
    common_pb2,
    retriever_pb2,
    retriever_pb2_grpc,
    reward_pb2,
    reward_pb2_grpc,
    rollout_pb2,
    rollout_pb2_grpc,
    trainer_pb2_grpc,
)
from searchrl.protocol import Document
from searchrl_reward.rules import ScoreResult
from searchrl_reward.scorer import ScoreInput
from searchrl_rollout.worker import RolloutWorker, make_puller

log = logging.getLogger(__name__)


class RolloutServicer(rollout_pb2_grpc.RolloutServicer):
    def __init__(self, worker: RolloutWorker) -> None:
        self.worker = worker

    def _status(self) -> rollout_pb2.RolloutStatus:
        st = self.worker.state
        return rollout_pb2.RolloutStatus(
            policy=common_pb2.PolicyInfo(version=st.version, weights_sha256=st.weights_sha256),
            consumer=self.worker.consumer,
            tasks_done=st.tasks_done,
            trajectories_written=st.trajectories_written,
        )

    @rpc("rollout")
    def GetStatus(self, request, context):  # noqa: N802 - gRPC method name
        return self._status()

    @rpc("rollout")
    def SyncWeights(self, request, context):  # noqa: N802
        """Records the request and answers at once with the current status: the worker loop pulls and reloads
        between batches (sync engine) or between segments (async engine); the engine is driven from the loop
        thread only and a reload never overlaps a generation."""
        if request.min_version < 0:
            raise ValueError("min_version: must be >= 0")
        self.worker.request_sync(request.min_version)
        return self._status()


def grpc_search(stub: retriever_pb2_grpc.RetrieverStub):
    """The search loop's `search(queries, k)` over the Retriever service; passages as `Document`s."""

    def search(queries: list[str], top_k: int) -> list[list[Document]]:
        resp = retrying(
            lambda: stub.Search(retriever_pb2.SearchRequest(queries=queries, top_k=top_k), timeout=120)
        )
        return [[Document(p.title, p.text) for p in r.passages] for r in resp.results]

    return search


def grpc_score(stub: reward_pb2_grpc.RewardStub):
    def score(preset: str, items: list[ScoreInput]) -> list[ScoreResult]:
        req = reward_pb2.ScoreRequest(
            preset=preset,
            items=[
                reward_pb2.ScoreItem(
                    question=i.question, response=i.response, golden_answers=i.golden_answers
                )
                for i in items
            ],
        )
        resp = retrying(lambda: stub.Score(req, timeout=120))
        return [ScoreResult(s.reward, s.em, s.cem, s.f1, s.format_ok, s.num_searches) for s in resp.scores]

    return score


def build_worker(cfg: Config, redis_url: str) -> RolloutWorker:
    """The worker of `rollout.engine`: AsyncRolloutWorker on vLLM's AsyncLLM, or RolloutWorker on the offline
    engine."""
    from transformers import AutoTokenizer

    from searchrl_rollout.async_engine import AsyncVllmEngine
    from searchrl_rollout.async_worker import AsyncRolloutWorker
    from searchrl_rollout.engine import VllmEngine

    model_path = resolve_model(cfg.model.path, cfg.model.cache_dir, cfg.run.seed)
    asynchronous = cfg.rollout.engine == "async"
    make_engine = AsyncVllmEngine if asynchronous else VllmEngine
    engine = make_engine.from_config(model_path, cfg.rollout, cfg.run.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    a = cfg.addresses
    search = grpc_search(retriever_pb2_grpc.RetrieverStub(channel(a.retriever, cfg.security)))
    score = grpc_score(reward_pb2_grpc.RewardStub(channel(a.reward, cfg.security)))
    pull = make_puller(trainer_pb2_grpc.TrainerStub(channel(a.trainer, cfg.security)))
    worker = AsyncRolloutWorker if asynchronous else RolloutWorker
    return worker(cfg, engine, tokenizer, search, score, pull, redisio.connect(redis_url))


def serve(cfg: Config, redis_url: str) -> tuple[Server, RolloutWorker]:
    """Start the engine and the control server; the caller runs `worker.run_forever()` in its main thread."""
    worker = build_worker(cfg, redis_url)
    r = cfg.rollout
    server = Server(r.port, r.metrics_port, r.workers, cfg.security, r.health_port)
    server.add(rollout_pb2_grpc.add_RolloutServicer_to_server, RolloutServicer(worker), "searchrl.v1.Rollout")
    server.start()
    return server, worker

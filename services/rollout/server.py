"""Rollout gRPC server: builds the engine, tokenizer and clients, serves status/sync RPCs, runs the worker loop."""

from __future__ import annotations

import json
import logging

import grpc

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
from searchrl_rollout.async_worker import AsyncRolloutWorker
from searchrl_rollout.worker import RolloutWorker, make_puller

# a round's broadcasts of a large model on a slow link; the group has its own timeout
PUSH_RPC_TIMEOUT_S = 900.0

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

    # ---- pushed weights: trainer rank 0 drives the engine's weight transfer (searchrl/weight_transfer.py) ------

    def _pushing(self, context) -> AsyncRolloutWorker:  # noqa: ANN001 - a grpc.ServicerContext
        worker = self.worker
        if not isinstance(worker, AsyncRolloutWorker) or not worker.pushed:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "pushed weights need rollout.engine 'async' and trainer.weight_sync 'nccl' or 'gloo'",
            )
        return worker

    @staticmethod
    def _payload(request) -> dict:  # noqa: ANN001 - a WeightTransferPayload
        try:
            info = json.loads(request.json)
        except ValueError as e:
            raise ValueError(f"json: not JSON ({e})") from e
        if not isinstance(info, dict):
            raise ValueError("json: must be a JSON object")
        return info

    @rpc("rollout")
    def InitWeightTransfer(self, request, context):  # noqa: N802
        w = self._pushing(context)
        w.on_loop(w.push_init(self._payload(request)), PUSH_RPC_TIMEOUT_S)
        return self._status()

    @rpc("rollout")
    def StartWeightUpdate(self, request, context):  # noqa: N802
        w = self._pushing(context)
        w.on_loop(w.push_start(), PUSH_RPC_TIMEOUT_S)
        return self._status()

    @rpc("rollout")
    def UpdateWeights(self, request, context):  # noqa: N802
        w = self._pushing(context)
        w.on_loop(w.push_update(self._payload(request)), PUSH_RPC_TIMEOUT_S)
        return self._status()

    @rpc("rollout")
    def FinishWeightUpdate(self, request, context):  # noqa: N802
        w = self._pushing(context)
        if request.version < 0:
            raise ValueError("version: must be >= 0")
        w.on_loop(w.push_finish(request.version, request.weights_sha256), PUSH_RPC_TIMEOUT_S)
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

    from searchrl.weight_transfer import push_backend
    from searchrl_rollout.async_engine import AsyncVllmEngine
    from searchrl_rollout.engine import VllmEngine

    model_path = resolve_model(cfg.model.path, cfg.model.cache_dir, cfg.run.seed)
    asynchronous = cfg.rollout.engine == "async"
    backend = push_backend(cfg.trainer.weight_sync)
    if asynchronous:
        engine = AsyncVllmEngine.from_config(model_path, cfg.rollout, cfg.run.seed, weight_transfer=backend)
    else:
        engine = VllmEngine.from_config(model_path, cfg.rollout, cfg.run.seed)
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
    if isinstance(worker, AsyncRolloutWorker) and worker.pushed:
        from searchrl.weight_transfer import host_or_default

        worker.register_receiver(f"{host_or_default(r.advertise_host)}:{server.port}")
    return server, worker

"""Reward gRPC server: thin proto <-> dataclass conversion around `RewardScorer`."""

from __future__ import annotations

from searchrl.config import Config
from searchrl.grpcutil import Server, rpc
from searchrl.proto import reward_pb2, reward_pb2_grpc
from searchrl_reward.scorer import RewardScorer, ScoreInput


class RewardServicer(reward_pb2_grpc.RewardServicer):
    def __init__(self, scorer: RewardScorer) -> None:
        self.scorer = scorer

    @rpc("reward")
    def Score(self, request, context):  # noqa: N802 - gRPC method name
        items = [ScoreInput(i.question, i.response, list(i.golden_answers)) for i in request.items]
        results = self.scorer.score(request.preset, items)
        return reward_pb2.ScoreResponse(
            scores=[
                reward_pb2.ItemScore(
                    reward=r.reward,
                    em=r.em,
                    cem=r.cem,
                    f1=r.f1,
                    format_ok=r.format_ok,
                    num_searches=r.num_searches,
                )
                for r in results
            ]
        )


def serve(cfg: Config) -> Server:
    r = cfg.reward
    server = Server(r.port, r.metrics_port, r.workers, cfg.security, r.health_port)
    scorer = RewardScorer.from_config(cfg.reward)
    server.add(reward_pb2_grpc.add_RewardServicer_to_server, RewardServicer(scorer), "searchrl.v1.Reward")
    server.start()
    return server

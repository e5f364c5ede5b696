"""The pieces the fuzz fixtures build services from: the scripted engine, a real RolloutWorker around it, and
the handle on the running services."""

from __future__ import annotations

from dataclasses import dataclass

from searchrl.config import Config
from searchrl.grpcutil import channel
from searchrl.proto import retriever_pb2_grpc, reward_pb2_grpc, trainer_pb2_grpc
from searchrl.protocol import get_protocol
from searchrl.weightsync import WeightStore
from searchrl_rollout.engine import GenOut, GenParams
from searchrl_rollout.server import grpc_score, grpc_search
from searchrl_rollout.worker import RolloutWorker, make_puller
from tests.fuzz.grpc_driver import Channels


class AnswerEngine:
    """The vLLM boundary, scripted: every sample answers at once without searching (one Score call per
    reward.max_batch samples). Tokenizer, Redis, reward and trainer stay real."""

    def __init__(self, tokenizer, protocol_name: str) -> None:  # noqa: ANN001
        p = get_protocol(protocol_name)
        self.text = f" {p.answer_open} Tirabel {p.answer_close}"
        self.ids = tokenizer.encode(self.text, add_special_tokens=False)

    def generate(self, prompts: list[list[int]], params: list[GenParams]) -> list[GenOut]:
        return [GenOut(self.ids, [-0.5] * len(self.ids), self.text, "stop", None) for _ in prompts]

    def load_weights(self, directory: str) -> None:
        pass


def make_worker(cfg: Config, tokenizer, r, consumer: str) -> RolloutWorker:  # noqa: ANN001
    """A real RolloutWorker on `AnswerEngine`, built like searchrl_rollout.server.build_worker."""
    a = cfg.addresses
    return RolloutWorker(
        cfg,
        AnswerEngine(tokenizer, cfg.rollout.protocol),
        tokenizer,
        grpc_search(retriever_pb2_grpc.RetrieverStub(channel(a.retriever, cfg.security))),
        grpc_score(reward_pb2_grpc.RewardStub(channel(a.reward, cfg.security))),
        make_puller(trainer_pb2_grpc.TrainerStub(channel(a.trainer, cfg.security))),
        r,
        consumer=consumer,
    )


@dataclass
class Services:
    """The running servers, as the fuzz tests see them: their config and token, the channels to each (by
    service name, "Retriever"), and the trainer's weight store (what GetWeights must serve)."""

    cfg: Config
    token: str
    channels: dict[str, Channels]
    store: WeightStore

"""Fixtures of the fuzz suite (`make test-fuzz`, marker `fuzz`).

- `fuzz_cfg`: the tiny config with a bearer token, servers bound to loopback, and small retriever/reward limits
  (so that generated values reach them at once; the contract is the same at any size).
- `services` (per module, like `learner` and `tokenizer`): the four real gRPC servers of the project (retriever
  and reward through their `serve`, trainer and rollout servicers around a real TrainerLoop + Learner on the tiny
  model and a real RolloutWorker) on loopback, and the channels the fuzz driver calls them through. Only the
  vLLM engine is scripted (`kit.AnswerEngine`), so no vLLM starts.
- `tally`: inputs per API and outcome; the table is rewritten after every test to $FUZZ_REPORT (default
  `<pytest basetemp>/fuzz-report.md`) and printed at the end of the session.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from searchrl.config import Config, SecurityConfig, read_token
from searchrl.grpcutil import Server, channel
from searchrl.models import resolve_model
from searchrl.proto import (
    rollout_pb2_grpc,
    trainer_pb2_grpc,
)
from searchrl.redisio import connect, free_port
from searchrl.weightsync import WeightStore
from searchrl_rollout.server import RolloutServicer
from searchrl_trainer.learner import Learner
from searchrl_trainer.loop import TrainerLoop
from searchrl_trainer.server import TrainerServicer
from tests.conftest import tiny_config_at
from tests.fuzz.grpc_driver import Channels
from tests.fuzz.kit import Services, make_worker
from tests.fuzz.report import Tally
from tests.integration.trainer_kit import make_cfg

_TALLY = Tally()
_REPORT: list[Path] = []
LEGEND = """\
Counts per API of one `make test-fuzz` run (tests/fuzz). gRPC: every reply is the documented one; a payload that does
not parse as the method's message gets INVALID_ARGUMENT "request: ..." (the servicer never runs), RESOURCE_EXHAUSTED a payload past the 64 MiB limit, UNAUTHENTICATED a missing or wrong token. Redis:
accepted/ValueError = what the decoder did; completed/dead-lettered = tasks through a running rollout worker;
admitted/discarded/ValueError (dead-lettered) = trajectories through the trainer's gather. s = seconds spent
handling the inputs (generating them not included).

"""


@pytest.fixture(scope="session")
def fuzz_cfg(tmp_path_factory) -> Config:
    d = tmp_path_factory.mktemp("fuzz")
    token_file = d / "token"
    token_file.write_text(secrets.token_hex(16))
    cfg = make_cfg(tiny_config_at(d / "run"))
    cfg.security = SecurityConfig(token_file=str(token_file), bind_host="127.0.0.1")
    cfg.retriever.max_batch, cfg.retriever.max_query_chars = 4, 256
    rw = cfg.reward
    rw.max_batch, rw.max_response_chars, rw.max_question_chars = 4, 2000, 256
    rw.max_golden_answers, rw.max_golden_answer_chars = 4, 64
    cfg.rollout.weights_dir = str(d / "weights")
    cfg.rollout.poll_interval_s, cfg.rollout.weights_pull_timeout_s = 0.05, 2.0
    for name in ("retriever", "reward", "trainer", "rollout"):
        section = getattr(cfg, name)
        section.port, section.metrics_port, section.health_port = free_port(), 0, 0
    a = cfg.addresses
    a.retriever, a.reward, a.trainer = (
        f"127.0.0.1:{x.port}" for x in (cfg.retriever, cfg.reward, cfg.trainer)
    )
    a.rollout = [f"127.0.0.1:{cfg.rollout.port}"]
    return cfg


@pytest.fixture(scope="module")
def learner(fuzz_cfg) -> Learner:
    return Learner(fuzz_cfg.trainer, resolve_model(fuzz_cfg.model.path), fuzz_cfg.run.seed)


@pytest.fixture(scope="module")
def tokenizer(fuzz_cfg):  # noqa: ANN201
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(fuzz_cfg.model.path))


@pytest.fixture(scope="module")
def services(fuzz_cfg, learner, tokenizer, redis_server) -> Iterator[Services]:
    from searchrl_retriever.server import serve as serve_retriever
    from searchrl_reward.server import serve as serve_reward

    cfg = fuzz_cfg.model_copy(deep=True)
    cfg.run.run_dir = str(Path(fuzz_cfg.run.run_dir) / "grpc")
    s = cfg.streams  # keys of their own: the Redis tests flush the database
    s.key_prefix, s.prompts, s.trajectories = "fuzz-grpc", "fuzz-grpc:prompts", "fuzz-grpc:trajectories"
    r = connect(redis_server.url)
    servers = [serve_retriever(cfg), serve_reward(cfg)]
    store = WeightStore(cfg.trainer.weight_chunk_bytes)
    loop = TrainerLoop(cfg, learner, r, store)
    loop.restore()
    worker = make_worker(cfg, tokenizer, r, "fuzz-grpc")
    for section, register, servicer, name in (
        (
            cfg.trainer,
            trainer_pb2_grpc.add_TrainerServicer_to_server,
            TrainerServicer(loop, store, cfg.trainer.max_weight_streams),
            "searchrl.v1.Trainer",
        ),
        (
            cfg.rollout,
            rollout_pb2_grpc.add_RolloutServicer_to_server,
            RolloutServicer(worker),
            "searchrl.v1.Rollout",
        ),
    ):
        server = Server(section.port, 0, section.workers, cfg.security)
        server.add(register, servicer, name)
        server.start()
        servers.append(server)
    token = read_token(cfg.security)
    a = cfg.addresses
    addresses = {"Retriever": a.retriever, "Reward": a.reward, "Trainer": a.trainer, "Rollout": a.rollout[0]}
    channels = {n: Channels(x, token, channel(x, cfg.security)) for n, x in addresses.items()}
    yield Services(cfg, token, channels, store)
    for chs in channels.values():
        chs.close()
    for server in servers:
        server.stop(0)
    worker.close()
    r.close()


@pytest.fixture(scope="session")
def tally(tmp_path_factory) -> Tally:
    _REPORT.append(Path(os.environ.get("FUZZ_REPORT") or tmp_path_factory.getbasetemp() / "fuzz-report.md"))
    return _TALLY


@pytest.fixture(autouse=True)
def _write_report(tally) -> Iterator[None]:
    yield
    _REPORT[0].parent.mkdir(parents=True, exist_ok=True)
    _REPORT[0].write_text(LEGEND + tally.markdown())


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest hook
    if _TALLY.outcomes:
        terminalreporter.write_sep("=", f"fuzz report ({_REPORT[0]})")
        terminalreporter.write(LEGEND + _TALLY.markdown())

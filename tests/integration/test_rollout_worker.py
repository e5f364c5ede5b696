"""Rollout workers as real processes (real vLLM) against real Redis, retriever and reward servers.

1. SIGKILL a worker while it holds a prompt task; a new worker reclaims it: every task yields its full group and
   nothing stays pending.
2. Weight sync: publish perturbed weights through a real Trainer gRPC server; the worker pulls and reloads them,
   and its behaviour log-probs then match the new weights (not the old ones).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from searchrl.config import dump_config
from searchrl.grpcutil import Server, channel, wait_serving
from searchrl.models import resolve_model
from searchrl.proto import rollout_pb2, rollout_pb2_grpc, trainer_pb2_grpc
from searchrl.records import PromptTask, Trajectory
from searchrl.redisio import free_port, policy_version_key
from searchrl.weightsync import WeightStore, serialize_state_dict
from searchrl_trainer.server import TrainerServicer
from tests.conftest import ROOT

GROUP_SIZE = 2


@pytest.fixture(scope="module")
def setup(retriever_and_reward, redis_server, tmp_path_factory):
    cfg = retriever_and_reward.model_copy(deep=True)
    cfg.streams.claim_idle_ms = 3000
    cfg.rollout.tasks_per_batch = 1
    cfg.rollout.segment_tokens = 64
    cfg.rollout.max_response_tokens = 256
    store = WeightStore(1 << 20)
    trainer = Server(free_port(), 0, 4, cfg.security)
    trainer.add(
        trainer_pb2_grpc.add_TrainerServicer_to_server, TrainerServicer(None, store), "searchrl.v1.Trainer"
    )
    trainer.start()
    cfg.addresses.trainer = f"127.0.0.1:{trainer.port}"
    cfg.addresses.redis_url = redis_server.url
    yield cfg, store, tmp_path_factory.mktemp("workers")
    trainer.stop(0)


def start_worker(cfg, workdir, name: str) -> tuple[subprocess.Popen, str]:
    c = cfg.model_copy(deep=True)
    c.rollout.port, c.rollout.metrics_port = free_port(), 0
    path = workdir / f"{name}.yaml"
    path.write_text(dump_config(c))
    env = {**os.environ, "SEARCHRL_REDIS_URL": cfg.addresses.redis_url}
    log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "searchrl.cli", "serve", "rollout", "-c", str(path)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    addr = f"127.0.0.1:{c.rollout.port}"
    wait_serving([addr], cfg.security, 600, alive=lambda: proc.poll() is None)
    return proc, addr


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    os.killpg(proc.pid, sig)
    proc.wait(60)


def push_tasks(r, n: int, prefix: str) -> list[str]:
    ids = []
    for i in range(n):
        t = PromptTask(
            f"{prefix}-{i}",
            f"In which city was Orlen Vask born? ({i})",
            ["Tirabel"],
            GROUP_SIZE,
            "r1s-stage1",
        )
        r.xadd("prompts", t.encode())
        ids.append(t.task_id)
    return ids


def trajectories_by_task(r) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for _, f in r.xrange("trajectories"):
        t = Trajectory.decode(f)
        out.setdefault(t.task_id, set()).add(t.sample_index)
    return out


def test_sigkill_mid_task_loses_nothing(setup, redis_client):
    cfg, _, workdir = setup
    r = redis_client
    a, _ = start_worker(cfg, workdir, "worker-a")
    task_ids = push_tasks(r, 3, "crash")
    deadline = time.monotonic() + 120
    while not r.xpending_range("prompts", "rollout", "-", "+", 10):  # wait until A holds a task
        assert time.monotonic() < deadline, "worker A never took a task"
        time.sleep(0.02)
    held = r.xpending_range("prompts", "rollout", "-", "+", 10)
    kill(a)
    assert held, "worker A held no task when killed"

    b, _ = start_worker(cfg, workdir, "worker-b")
    try:
        deadline = time.monotonic() + 300
        while True:
            got = trajectories_by_task(r)
            done = all(len(got.get(t, ())) == GROUP_SIZE for t in task_ids)
            if done and r.xpending("prompts", "rollout")["pending"] == 0:
                break
            assert time.monotonic() < deadline, f"tasks not all done: {got}"
            time.sleep(0.5)
        assert "reclaimed" in (workdir / "worker-b.log").read_text()
    finally:
        kill(b, signal.SIGTERM)


def _logprobs(model, prompt: list[int], response: list[int]) -> np.ndarray:
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return np.array([lp[len(prompt) - 1 + i, t].item() for i, t in enumerate(response)])


def test_worker_pulls_and_serves_new_weights(setup, redis_client):
    from transformers import AutoModelForCausalLM

    cfg, store, workdir = setup
    r = redis_client
    old = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model.path), dtype=torch.float32)
    new = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model.path), dtype=torch.float32)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    pub = store.publish(1, serialize_state_dict(new.state_dict(), torch.bfloat16, {"lm_head.weight"}))
    proc, addr = start_worker(cfg, workdir, "worker-sync")
    try:
        r.set(policy_version_key("searchrl"), 1)
        stub = rollout_pb2_grpc.RolloutStub(channel(addr, cfg.security))
        deadline = time.monotonic() + 120
        while stub.GetStatus(rollout_pb2.RolloutStatusRequest(), timeout=10).policy.version < 1:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        st = stub.GetStatus(rollout_pb2.RolloutStatusRequest(), timeout=10)
        assert st.policy.weights_sha256 == pub.sha256

        r.xadd(
            "prompts",
            PromptTask(
                "sync-0", "Who founded Saldane Press?", ["Orlen Vask"], 1, "r1s-stage1", min_policy_version=1
            ).encode(),
        )
        deadline = time.monotonic() + 120
        while not [f for _, f in r.xrange("trajectories") if Trajectory.decode(f).task_id == "sync-0"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        t = next(
            Trajectory.decode(f)
            for _, f in r.xrange("trajectories")
            if Trajectory.decode(f).task_id == "sync-0"
        )
        assert t.policy_version == 1
        m = t.loss_mask == 1
        prompt, resp = t.prompt_ids.tolist(), t.response_ids.tolist()
        err_new = np.abs(_logprobs(new, prompt, resp)[m] - t.logprobs[m]).mean()
        err_old = np.abs(_logprobs(old, prompt, resp)[m] - t.logprobs[m]).mean()
        # bf16 engine vs fp32 reference: the mean gap to the new weights varied 0.2-0.4 across runs (flaky at
        # the old 0.1 bound, also at aa002d0); to the old weights it stays 1.2-6.
        assert err_new < 0.5 and err_old > 3 * err_new, (err_new, err_old)

        # a bad control request is refused with the field named, and the worker keeps serving
        import grpc

        with pytest.raises(grpc.RpcError) as e:
            stub.SyncWeights(rollout_pb2.SyncWeightsRequest(min_version=-1), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "min_version" in e.value.details()
        wait_serving([addr], cfg.security, 10)
    finally:
        kill(proc, signal.SIGTERM)

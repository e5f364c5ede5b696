"""Fault injection on the whole system (tiny config, 8 steps, two rollout workers, Redis with AOF): after each
fault the run must finish its steps with nothing trained twice, nothing lost and poison dead-lettered, `searchrl
audit` must pass, and a restarted trainer must resume at the step it had committed.

Cheap faults that do not interact share a run (retriever, reward and worker kills; poison prompts and
trajectories). Not in the default test run: `make test-chaos` (about 25 minutes on 2 cores).
"""

from __future__ import annotations

import signal
import time

import pytest

from searchrl.redisio import connect
from tests.chaos.accounting import Accounting, task_of
from tests.chaos.faults import xadd_bad_trajectories, xadd_poison_prompts
from tests.chaos.harness import WORKERS, Cluster
from tests.chaos.scenario import Run

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1800)]


def _busy_worker(c: Cluster) -> str | None:
    """A running worker that holds prompt tasks it has not finished (mid-batch)."""
    pending = c.pending(c.cfg.streams.prompts, "rollout")
    for name in WORKERS:
        if name not in c.down and pending.get(c.consumer(name), 0) > 0:
            return name
    return None


def _trainer_mid_step(c: Cluster) -> bool:
    """The trainer holds a full batch of trajectories right after an odd step: it is training (or committing)
    a step that the next checkpoint (every 2 steps) would cover."""
    tc = c.cfg.trainer
    done = c.committed()
    if done < 3 or done % 2 == 0:
        return False
    return (
        sum(c.pending(c.cfg.streams.trajectories, "trainer").values()) >= tc.groups_per_step * tc.group_size
    )


def test_no_fault(chaos_run: Run):
    chaos_run.finish()


def test_trainer_sigkill_mid_step(chaos_run: Run):
    c = chaos_run.cluster
    c.wait_until("trainer mid-step after an odd step", lambda: _trainer_mid_step(c), 900, 0.05)
    f = chaos_run.fault("SIGKILL trainer mid-step, restart")
    committed = c.committed()
    c.restart("trainer")
    c.wait_serving(("trainer",))
    resumed = c.trainer_status().step
    chaos_run.expect(
        resumed == committed,
        f"restarted trainer resumed at step {resumed}; {committed} steps were committed before the kill",
    )
    chaos_run.recovered(f)
    chaos_run.finish()


def test_retriever_reward_and_worker_sigkill(chaos_run: Run):
    c, prompts = chaos_run.cluster, chaos_run.cfg.streams.prompts
    for service in ("retriever", "reward"):
        c.wait_until("a worker mid-batch", lambda: sum(c.pending(prompts, "rollout").values()) > 0, 600)
        f = chaos_run.fault(f"SIGKILL {service}, restart")
        c.restart(service)
        chaos_run.recovered(f)
    worker = c.wait_until("a worker mid-batch", lambda: _busy_worker(c), 600, 0.1)
    f = chaos_run.fault(f"SIGKILL {worker} mid-batch, restart")
    c.restart(worker)
    chaos_run.recovered(f)
    c.wait_serving((worker,))
    chaos_run.finish()


def test_redis_restart(chaos_run: Run):
    chaos_run.cluster.wait_committed(3)
    f = chaos_run.fault("restart Redis (SIGTERM, AOF everysec), 2 s down")
    chaos_run.redis.stop()
    time.sleep(2)
    chaos_run.redis.start()
    chaos_run.recovered(f)
    chaos_run.finish()


def test_worker_sigstop_past_claim_idle(chaos_run: Run):
    c = chaos_run.cluster
    c.wait_committed(2)
    worker = c.wait_until("a worker mid-batch", lambda: _busy_worker(c), 600, 0.1)
    pause = 3 * c.cfg.streams.claim_idle_ms / 1000
    f = chaos_run.fault(f"SIGSTOP {worker} mid-batch for {pause:.0f} s (3x claim_idle_ms), SIGCONT")
    c.send(worker, signal.SIGSTOP)
    time.sleep(pause)
    c.send(worker, signal.SIGCONT)
    chaos_run.recovered(f)
    chaos_run.finish()


def test_poison_prompts_and_trajectories(chaos_run: Run):
    c, cfg = chaos_run.cluster, chaos_run.cfg
    r = connect(chaos_run.redis.url)
    c.wait_committed(2)
    f = chaos_run.fault('XADD prompt tasks with group_size "4" and 10**9')
    prompt_tasks = xadd_poison_prompts(r, cfg)
    chaos_run.recovered(f)
    c.wait_committed(
        c.committed() + 1
    )  # right after a commit: the poison is as fresh as the trainer's version
    f = chaos_run.fault("XADD trajectory groups with reward NaN and token id 10**9")
    traj_tasks = xadd_bad_trajectories(r, cfg)
    chaos_run.recovered(f)
    r.close()

    def poison_settled(acc: Accounting) -> list[str]:
        problems = [f"poison prompt task {t} not dead-lettered" for t in prompt_tasks if t not in acc.dead]
        trained = {task_of(t) for t in acc.ledger}
        for t in traj_tasks:
            if t in trained:
                problems.append(f"poison trajectories of {t} were trained")
            elif t not in acc.dead and not any(d.startswith(t + "/") for d in acc.dead):
                problems.append(f"poison trajectories of {t} not dead-lettered")
        return problems

    chaos_run.finish(poison_settled)

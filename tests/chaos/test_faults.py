"""Fault injection on the whole system (tiny config, 8 steps, two rollout workers, Redis with AOF): after each
fault the run must finish its steps with nothing trained twice, nothing lost and poison dead-lettered, `searchrl
audit` must pass, and a restarted trainer must resume at its newest checkpoint and train the steps after it again
(metrics.jsonl keeps one line per step).

Cheap faults that do not interact share a run (retriever, reward and worker kills; poison prompts and
trajectories). Not in the default test run: `make test-chaos` (2.5-5 min per scenario on 2 cores).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from searchrl.audit import checkpoint_step
from searchrl.redisio import connect
from tests.chaos.accounting import Accounting
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


def test_no_fault(chaos_run: Run):
    chaos_run.finish()


def test_trainer_sigkill_mid_step(chaos_run: Run):
    """Killed while training step 4 (checkpoints every 2 steps): the restarted trainer resumes at the newest
    checkpoint on disk (step 2) and trains step 3's groups again."""
    c, tap, tc = chaos_run.cluster, chaos_run.tap, chaos_run.cfg.trainer
    c.wait_committed(3)
    before = tap.complete()
    c.wait_until("step 4's groups written", lambda: len(tap.complete() - before) >= tc.groups_per_step, 600)
    time.sleep(1.0)  # the trainer reads them within its 0.5 s poll, then trains for seconds
    checkpoint = checkpoint_step(c.run_dir)
    committed = c.committed()
    f = chaos_run.fault("SIGKILL trainer mid-step, restart")
    c.restart("trainer")
    chaos_run.expect(
        committed == 3 and c.committed() == 3, f"the kill landed after step {c.committed()}, not in step 4"
    )
    c.wait_serving(("trainer",))
    resumed = c.trainer_status().step
    chaos_run.expect(
        resumed == checkpoint,
        f"restarted trainer resumed at step {resumed}; the newest checkpoint on disk was step {checkpoint}",
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
    f = chaos_run.fault("restart Redis (SIGTERM, AOF everysec), 5 s down")
    chaos_run.redis.stop()
    time.sleep(5)
    chaos_run.redis.start()
    chaos_run.recovered(f)
    chaos_run.finish()


def test_worker_sigstop_past_claim_idle(chaos_run: Run):
    """A worker frozen mid-batch until the other worker has reclaimed its task (after claim_idle_ms) and written
    the group, then thawed: its late copy of the group races with the step that trains the first one."""
    c, tap = chaos_run.cluster, chaos_run.tap
    c.wait_committed(2)
    worker = c.wait_until("a worker mid-batch", lambda: _busy_worker(c), 600, 0.05)
    waiting = set(tap.issued) - tap.complete()
    f = chaos_run.fault(f"SIGSTOP {worker} mid-batch until its task is redone elsewhere, SIGCONT")
    c.send(worker, signal.SIGSTOP)
    c.wait_until("the frozen worker's task redone", lambda: waiting <= tap.complete(), 300, 0.05)
    frozen = time.monotonic() - f.t0
    c.send(worker, signal.SIGCONT)
    f.label += f" ({frozen:.0f} s)"
    chaos_run.expect(
        frozen * 1000 >= c.cfg.streams.claim_idle_ms,
        f"the frozen worker's task was redone after {frozen:.1f} s, before claim_idle_ms",
    )
    chaos_run.recovered(f)
    chaos_run.finish()


def test_poison_prompts_and_trajectories(chaos_run: Run):
    c, cfg, tap = chaos_run.cluster, chaos_run.cfg, chaos_run.tap
    r = connect(chaos_run.redis.url)
    c.wait_committed(2)
    f = chaos_run.fault('XADD prompt tasks with group_size "4" and 10**9')
    prompt_tasks = xadd_poison_prompts(r, cfg)
    chaos_run.recovered(f)
    c.wait_committed(c.committed() + 1)

    def unwritten() -> list[str] | None:  # tasks of the next step that no worker has finished yet
        tasks = [t for t in tap.issued if t not in prompt_tasks and not tap.written.get(t)]
        return tasks if len(tasks) >= 2 else None

    traj_tasks = c.wait_until("two issued tasks not written yet", unwritten, 60, 0.05)[:2]
    f = chaos_run.fault("XADD groups with reward NaN / token id 10**9 for 2 issued tasks")
    xadd_bad_trajectories(r, cfg, *traj_tasks)
    chaos_run.recovered(f)
    r.close()

    def poison_settled(acc: Accounting) -> list[str]:
        problems = [f"poison prompt task {t} not dead-lettered" for t in prompt_tasks if t not in acc.dead]
        problems += [f"poison trajectories of {t} not dead-lettered" for t in traj_tasks if t not in acc.dead]
        return problems + non_finite_weights(chaos_run.cluster.run_dir / "hf" / "final")

    chaos_run.finish(poison_settled)


def non_finite_weights(folder: Path) -> list[str]:
    """Tensors of the exported final policy with NaN/inf values."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return [f"no exported weights in {folder}"]
    return [
        f"{f.name}:{k} not finite" for f in files for k, t in load_file(f).items() if not t.isfinite().all()
    ]

"""The learner over several processes: start a node's ranks, keep them in step with rank 0, fail together.

Contract:
- `launch(cfg, model_path)` runs in the trainer service's process on every node. With `trainer.world_size` 1 it
  only builds the `Learner`. Otherwise that process is local rank 0 of node `SEARCHRL_NODE_RANK` (0 unless set;
  Helm sets the pod's index): it starts local ranks 1..world_size/nodes - 1 as `python -m searchrl_trainer.dist`
  (settings on stdin, torch.distributed's env:// variables in the environment), then builds its own Learner
  (the collective init finds rank 0 at MASTER_ADDR:MASTER_PORT; one node picks a free loopback port itself) and
  a control channel. It returns `Leader(learner)` on global rank 0, and `(learner, channel)` for `follow` on
  the other ranks.
- `Leader` stands in for the Learner in the loop: each call that every rank must make (`train_step`, `save`,
  `load`, a ZeRO-3 weight gather) is first broadcast on the control channel, with its arguments (the whole
  batch), then run locally. While rank 0 waits for groups it pings the channel every `dist_timeout_s / 4`, so
  idle ranks neither time out nor hang on a rank 0 that is gone.
- Failing together: a rank that sees an error (its command failed, a peer closed its socket, a timeout) exits
  non-zero. A node's first process exits as soon as one of its ranks does, and a spawned rank exits when its
  parent is gone. So the death of any rank takes the trainer service down, its supervisor (Kubernetes,
  compose, `searchrl up`) restarts it, and it resumes from its newest checkpoint: the queue contract of
  docs/reliability.md (trajectories stay pending until a checkpoint covers their step) loses nothing.
This module knows nothing about Redis, gRPC or the RL maths.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta

import torch

from searchrl.config import Config, ConfigError, TrainerConfig
from searchrl.redisio import free_port
from searchrl_trainer.learner import Learner, StepFailed

log = logging.getLogger(__name__)

NODE_RANK_ENV = "SEARCHRL_NODE_RANK"
_POLL_S = 0.5


class Channel:
    """Rank 0's commands to the other ranks: pickled objects broadcast on a gloo group of their own (so a
    long wait uses no GPU collective), one sender at a time."""

    def __init__(self, timeout_s: float) -> None:
        self.group = torch.distributed.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._last = time.monotonic()

    def send(self, command: str, *args: object) -> None:
        with self._lock:
            torch.distributed.broadcast_object_list([(command, args)], src=0, group=self.group)
            self._last = time.monotonic()

    def recv(self) -> tuple[str, tuple]:
        box: list[object] = [None]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]  # type: ignore[return-value]

    def keep_alive(self) -> None:
        """Rank 0: ping the others whenever the channel was quiet for a quarter of the timeout (forever)."""
        every = self.timeout_s / 4
        while True:
            time.sleep(min(every, 30.0))
            if time.monotonic() - self._last >= every:
                try:
                    self.send("ping")
                except Exception as e:  # noqa: BLE001 - a rank is gone: the whole trainer must restart
                    _die(f"learner ranks unreachable ({type(e).__name__}: {e})")


class Leader:
    """Global rank 0's learner: forwards collective calls to the other ranks before running them here. Other
    attributes are the local Learner's."""

    def __init__(self, learner: Learner, channel: Channel, ranks: _LocalRanks) -> None:
        self.learner, self.channel, self.ranks = learner, channel, ranks
        threading.Thread(target=channel.keep_alive, name="dist-keepalive", daemon=True).start()
        atexit.register(self.stop)

    def __getattr__(self, name: str) -> object:
        return getattr(self.learner, name)

    def train_step(self, trajs: list) -> dict[str, float]:
        self.channel.send("train_step", trajs)
        return self.learner.train_step(trajs)

    def save(self, directory: str, tag: str, client_state: dict) -> None:
        self.channel.send("save", directory, tag, client_state)
        self.learner.save(directory, tag, client_state)

    def load(self, directory: str) -> dict | None:
        self.channel.send("load", directory)
        return self.learner.load(directory)

    def state_dict_for_export(self) -> dict[str, torch.Tensor]:
        if self.learner.cfg.zero_stage == 3:  # a gather of every rank's partition
            self.channel.send("state_dict")
        return self.learner.state_dict_for_export()

    def export_hf(self, directory: str) -> None:
        if self.learner.cfg.zero_stage == 3:
            self.channel.send("state_dict")
        self.learner.export_hf(directory)

    def stop(self) -> None:
        """Tell the other ranks to exit (a clean stop), then wait for this node's."""
        if self.ranks.stopping:
            return
        self.ranks.stopping = True
        try:
            self.channel.send("stop")
        except Exception as e:  # noqa: BLE001 - they may be gone already
            log.warning("could not stop the other learner ranks: %s", e)
        self.ranks.wait(60.0)


def follow(learner: Learner, channel: Channel) -> None:
    """A rank other than 0: run rank 0's commands until it says stop. A failed command is fatal (raises)."""
    while True:
        command, args = channel.recv()
        if command == "stop":
            return
        if command == "train_step":
            try:
                learner.train_step(*args)
            except StepFailed:  # raised on every rank alike; rank 0 handles it
                pass
        elif command == "save":
            learner.save(*args)
        elif command == "load":
            learner.load(*args)
        elif command == "state_dict":
            learner.state_dict_for_export()
        elif command != "ping":
            raise RuntimeError(f"unknown learner command {command!r}")


class _LocalRanks:
    """This node's spawned ranks; a watcher exits this process as soon as one of them exits unasked."""

    def __init__(self, procs: list[subprocess.Popen]) -> None:
        self.procs = procs
        self.stopping = False
        if procs:
            threading.Thread(target=self._watch, name="dist-watch", daemon=True).start()

    def _watch(self) -> None:
        while not self.stopping:
            for p in self.procs:
                if p.poll() is not None and not self.stopping:
                    _die(f"learner rank process {p.pid} exited with status {p.returncode}")
            time.sleep(_POLL_S)

    def wait(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for p in self.procs:
            try:
                p.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.kill()


def _die(reason: str) -> None:
    """Exit at once, like a crash: the supervisor restarts the service from its checkpoint."""
    log.critical("%s: stopping the trainer (it resumes from its checkpoint on restart)", reason)
    logging.shutdown()
    os._exit(1)


def _node_rank(t: TrainerConfig) -> int:
    raw = os.environ.get(NODE_RANK_ENV, "0")
    if not raw.isdigit() or int(raw) >= t.nodes:
        raise ConfigError(f"{NODE_RANK_ENV}={raw!r}: must be a node index below trainer.nodes ({t.nodes})")
    return int(raw)


def _rendezvous(t: TrainerConfig, node: int) -> dict[str, str]:
    env = {"WORLD_SIZE": str(t.world_size), "LOCAL_WORLD_SIZE": str(t.world_size // t.nodes)}
    if t.nodes == 1:
        env["MASTER_ADDR"] = os.environ.get("MASTER_ADDR", "127.0.0.1")
        env["MASTER_PORT"] = os.environ.get("MASTER_PORT") or str(free_port())
        return env
    for k in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(k):
            raise ConfigError(f"{k}: not set; trainer.nodes > 1 needs rank 0's address (Helm sets it)")
        env[k] = os.environ[k]
    return env


def launch(cfg: Config, model_path: str) -> Leader | Learner | tuple[Learner, Channel]:
    """Start this node's ranks and build this process's learner (see the module docstring)."""
    t = cfg.trainer
    for field in ("weight_sync", "dist_backend"):
        if getattr(t, field) == "nccl":
            _require_gpus(f"trainer.{field}", t.world_size // t.nodes)
    if t.world_size == 1:
        return Learner(t, model_path, cfg.run.seed)
    node, per_node = _node_rank(t), t.world_size // t.nodes
    env = _rendezvous(t, node)
    settings = json.dumps(
        {"trainer": t.model_dump(mode="json"), "model_path": model_path, "seed": cfg.run.seed}
    )
    procs = []
    for local in range(1, per_node):
        rank_env = {**os.environ, **env, "RANK": str(node * per_node + local), "LOCAL_RANK": str(local)}
        p = subprocess.Popen(
            [sys.executable, "-m", "searchrl_trainer.dist"], stdin=subprocess.PIPE, env=rank_env, text=True
        )
        p.stdin.write(settings)
        p.stdin.close()
        procs.append(p)
    ranks = _LocalRanks(procs)
    os.environ.update({**env, "RANK": str(node * per_node), "LOCAL_RANK": "0"})
    log.info("learner rank %d of %d (node %d, %d local ranks)", node * per_node, t.world_size, node, per_node)
    learner = Learner(t, model_path, cfg.run.seed)
    channel = Channel(t.dist_timeout_s)
    if learner.rank == 0:
        return Leader(learner, channel, ranks)
    atexit.register(lambda: (setattr(ranks, "stopping", True), ranks.wait(60.0)))
    return learner, channel


def _require_gpus(field: str, n: int) -> None:
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have < n:
        raise ConfigError(
            f"{field}: 'nccl' needs {n} CUDA GPU(s) per node, this node has {have} (use 'grpc'/'gloo')"
        )


def _watch_parent() -> None:
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(_POLL_S)
    _die("the trainer service process is gone")


def main() -> None:
    """A spawned rank: settings on stdin, rank in the environment; follow rank 0 until it stops."""
    settings = json.loads(sys.stdin.read())
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s rank{os.environ['RANK']} %(name)s %(message)s"
    )
    threading.Thread(target=_watch_parent, name="dist-parent", daemon=True).start()
    learner = Learner(
        TrainerConfig.model_validate(settings["trainer"]), settings["model_path"], settings["seed"]
    )
    follow(learner, Channel(learner.cfg.dist_timeout_s))


if __name__ == "__main__":
    main()

"""Trainer rank 0's side of pushed weight sync (`trainer.weight_sync: nccl | gloo`, searchrl/weight_transfer.py).

Contract:
- `submit(version, sha256, state)` hands over a published policy: `state` must be a snapshot nobody mutates
  afterwards (name -> tensor, in the rollout dtype, without the keys vLLM ties itself). A newer submit replaces
  one not yet sent; `submit` never blocks on the workers.
- A background thread keeps every registered receiver (the Redis hash `<prefix>:weight_receivers`, written by
  the workers: control address -> consumer) on the newest submitted version: a receiver new to it gets a
  transfer group of its own (rendezvous on a free port of `trainer.push_host`, world size 2: this rank and the
  worker's engine), then every version it lacks is sent through vLLM's start / update / finish round, the finish
  carrying (version, sha256) for the worker to adopt. It polls the hash every `poll_s`, so a worker that joins
  late gets the current weights at once, without waiting for the next step.
- A receiver whose push fails loses its group (rebuilt on the next try); one whose control port does not answer
  `GetStatus` is removed from the hash (its heartbeat re-adds it while it lives). A worker a push misses pulls
  the version over gRPC after 30 s (the fallback), so a failure here costs time, never a trajectory.
- `close()` stops the thread and shuts the groups down.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

import grpc
import redis

from searchrl import redisio
from searchrl.config import Config
from searchrl.grpcutil import channel
from searchrl.proto import rollout_pb2, rollout_pb2_grpc
from searchrl.weight_transfer import StateSource, bucket_bytes, host_or_default, push_backend, trainer_engine

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0


@dataclass
class Snapshot:
    version: int
    sha256: str
    state: dict[str, Any]


class GrpcWeightSyncClient:
    """vLLM's `VLLMWeightSyncClient` over one rollout worker's control RPCs; `finish_weight_update` sends the
    (version, sha256) set in `.published`."""

    def __init__(self, stub: rollout_pb2_grpc.RolloutStub, timeout_s: float) -> None:
        self.stub, self.timeout_s = stub, timeout_s
        self.published: tuple[int, str] = (0, "")

    def _payload(self, info: Any) -> rollout_pb2.WeightTransferPayload:
        return rollout_pb2.WeightTransferPayload(json=json.dumps(info))

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.stub.InitWeightTransfer(self._payload(init_info), timeout=self.timeout_s)

    def start_weight_update(self) -> None:
        self.stub.StartWeightUpdate(rollout_pb2.RolloutStatusRequest(), timeout=self.timeout_s)

    def update_weights(self, update_info: Any) -> None:
        self.stub.UpdateWeights(self._payload(update_info), timeout=self.timeout_s)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        version, sha = self.published
        req = rollout_pb2.FinishWeightUpdateRequest(version=version, weights_sha256=sha)
        self.stub.FinishWeightUpdate(req, timeout=self.timeout_s)


@dataclass
class Receiver:
    client: GrpcWeightSyncClient
    engine: Any = None  # the trainer-side transfer engine, None until the group is up
    version: int = -1  # the version it last got


class WeightPusher:
    """See the module docstring."""

    def __init__(self, cfg: Config, r: redis.Redis, poll_s: float = 1.0) -> None:
        backend = push_backend(cfg.trainer.weight_sync)
        if backend is None:
            raise ValueError(f"trainer.weight_sync: {cfg.trainer.weight_sync!r} does not push")
        self.cfg, self.r, self.backend, self.poll_s = cfg, r, backend, poll_s
        self.key = redisio.weight_receivers_key(cfg.streams.key_prefix)
        self.host = host_or_default(cfg.trainer.push_host)
        self.device = "cuda" if backend == "nccl" else "cpu"
        self.receivers: dict[str, Receiver] = {}
        self._newest: Snapshot | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weight-push", daemon=True)
        self._thread.start()

    def submit(self, version: int, sha256: str, state: dict[str, Any]) -> None:
        self._newest = Snapshot(version, sha256, {k: v.to(self.device) for k, v in state.items()})
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=60)
        for rec in self.receivers.values():
            if rec.engine is not None:
                rec.engine.shutdown()
        self.receivers.clear()

    # ---- the thread ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.push_round()
            except Exception as e:  # noqa: BLE001 - Redis away: the next round retries
                log.warning("weight push round failed: %s", e)

    def push_round(self) -> None:
        """Bring every registered receiver to the newest submitted version (one pass)."""
        pub = self._newest
        if pub is None:
            return
        addresses = {k.decode(): v for k, v in self.r.hgetall(self.key).items()}
        for gone in set(self.receivers) - set(addresses):
            self._drop(gone)
        for address in addresses:
            rec = self.receivers.get(address)
            if rec is not None and rec.version >= pub.version:
                continue
            try:
                self._push(address, pub)
            except Exception as e:  # noqa: BLE001 - one worker's failure must not stop the others
                self._failed(address, e)

    def _push(self, address: str, pub: Snapshot) -> None:
        rec = self.receivers.get(address)
        if rec is None:
            stub = rollout_pb2_grpc.RolloutStub(channel(address, self.cfg.security))
            stub.GetStatus(rollout_pb2.RolloutStatusRequest(), timeout=PROBE_TIMEOUT_S)
            timeout = self.cfg.rollout.weights_pull_timeout_s
            rec = self.receivers[address] = Receiver(GrpcWeightSyncClient(stub, timeout))
        rec.client.published = (pub.version, pub.sha256)
        source = StateSource(pub.state)
        if rec.engine is None:
            rec.engine = trainer_engine(
                self.backend,
                rec.client,
                source,
                self.host,
                redisio.free_port(),
                world_size=2,
                bucket_bytes=bucket_bytes(self.backend, self.cfg.trainer.weight_bucket_bytes),
            )
            log.info("weight transfer group with %s is up (%s)", address, self.backend)
        rec.engine.source = source
        rec.engine.send_weights()
        rec.version = pub.version
        log.info("pushed v%d to %s", pub.version, address)

    def _failed(self, address: str, e: Exception) -> None:
        unreachable = isinstance(e, grpc.RpcError) and e.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        log.warning("weight push to %s failed (%s)%s", address, e, "; dropping it" if unreachable else "")
        self._drop(address)
        if unreachable:
            self.r.hdel(self.key, address)

    def _drop(self, address: str) -> None:
        rec = self.receivers.pop(address, None)
        if rec is not None and rec.engine is not None:
            try:
                rec.engine.shutdown()
            except Exception:  # noqa: BLE001 - the group is being discarded anyway
                log.debug("shutdown of the group with %s failed", address, exc_info=True)

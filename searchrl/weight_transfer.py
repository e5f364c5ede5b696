"""The push weight-sync path (`trainer.weight_sync: nccl | gloo`): trainer rank 0 broadcasts each new policy
straight into the rollout workers' vLLM engines through vLLM's native weight-transfer API (init / start /
update / finish, DESIGN.md section 1), instead of each worker pulling a safetensors payload over gRPC.

Backends (the engine's `weight_transfer_config.backend`, the trainer's `TrainerInitInfo.backend`):
- `nccl`: vLLM's own `NCCLWeightTransferEngine` / `NCCLTrainerWeightTransferEngine` (CUDA GPUs; packed NCCL
  broadcasts, layerwise reload in the worker).
- `searchrl-gloo` (`GLOO`): the same flow over a gloo group, so the whole path (control plane, rendezvous, bucketed
  broadcast, in-place reload in a running engine) runs and is tested on CPU. Tensors travel in buckets of
  `bucket_bytes` (`searchrl.weightsync.plan_buckets`: one collective per bucket, not per tensor).

Contract:
- `register()` adds `searchrl-gloo` to vLLM's worker and trainer factories; idempotent. It is installed as a
  vLLM general plugin (pyproject entry point `vllm.general_plugins`), so vLLM's engine-core processes run it too.
- `trainer_engine(backend, client, source, master_address, master_port, world_size, bucket_bytes)` opens the
  trainer endpoint (rank 0) and, concurrently, has the inference side join through `client` (any object with
  vLLM's `VLLMWeightSyncClient` methods); it returns an engine whose `send_weights()` runs start / update (the
  worker receives while rank 0 broadcasts) / finish. A failure surfaces as an exception; the group is then
  unusable and the caller shuts the engine down.
- `StateSource(state)` is a `WeightSource` over a name -> tensor dict, in its order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

import torch
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory, WeightTransferTrainerFactory
from vllm.distributed.weight_transfer.nccl_common import NCCLWeightTransferInitInfo, worker_init_payload
from vllm.distributed.weight_transfer.nccl_engine import (
    NCCLTrainerInitInfo,
    NCCLTrainerWeightTransferEngine,
    NCCLWeightTransferEngine,
    NCCLWeightTransferUpdateInfo,
)

from searchrl.weightsync import recv_buckets, send_buckets

GLOO = "searchrl-gloo"
BACKENDS = ("nccl", GLOO)


# rendezvous and each collective: a vanished peer fails the push instead of hanging it
GROUP_TIMEOUT = timedelta(minutes=5)


def _gloo_group(host: str, port: int, rank: int, world_size: int) -> Any:
    """A gloo process group outside torch.distributed's global state (vLLM's stateless init)."""
    from vllm.distributed.utils import stateless_init_torch_distributed_process_group

    return stateless_init_torch_distributed_process_group(
        host, port, rank, world_size, backend="gloo", timeout=GROUP_TIMEOUT
    )


def _bcast(group: Any):  # noqa: ANN202
    """Broadcast from group rank 0 on a stateless group (torch.distributed.broadcast needs the global group)."""
    return lambda t: group.broadcast(t, 0).wait()


def _meta(update_info: NCCLWeightTransferUpdateInfo) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [
        (n, tuple(s), getattr(torch, d))
        for n, d, s in zip(update_info.names, update_info.dtype_names, update_info.shapes, strict=True)
    ]


class GlooWeightTransferEngine(NCCLWeightTransferEngine):
    """Worker side of `searchrl-gloo`: vLLM's NCCL engine (init-info and update-info parsing, layerwise reload
    in start / finish) with the group and the receive over gloo, in buckets."""

    def init_transfer_engine(self, init_info: NCCLWeightTransferInitInfo) -> None:
        self.packed_buffer_size_bytes = init_info.packed_buffer_size_bytes
        pc = self.parallel_config
        rank = init_info.rank_offset + pc.data_parallel_index * pc.world_size + pc.rank
        assert init_info.master_address is not None and init_info.master_port is not None
        self.model_update_group = _gloo_group(
            init_info.master_address, init_info.master_port, rank, init_info.world_size
        )

    def receive_weights(self, update_info: NCCLWeightTransferUpdateInfo) -> None:
        if self.model_update_group is None:
            raise RuntimeError(
                "searchrl-gloo weight transfer not initialised: call init_transfer_engine first"
            )
        pairs = recv_buckets(
            _meta(update_info), self.packed_buffer_size_bytes, _bcast(self.model_update_group), self.device
        )
        self.model.load_weights(pairs)  # one call: the tensors load as their buckets arrive

    def shutdown(self) -> None:
        self.model_update_group = None


@dataclass
class GlooTrainerInitInfo(NCCLTrainerInitInfo):
    """`NCCLTrainerInitInfo` for `searchrl-gloo` (`packed_buffer_size_bytes` is the bucket size)."""

    backend: ClassVar[str] = GLOO


class GlooTrainerWeightTransferEngine(NCCLTrainerWeightTransferEngine):
    """Trainer side of `searchrl-gloo`: vLLM's NCCL trainer engine (metadata, start / update / finish round trip,
    source checks) with the endpoint and the broadcast over gloo, in buckets."""

    init_info_cls = GlooTrainerInitInfo

    @classmethod
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client: Any, source: WeightSource | None = None):  # noqa: ANN206
        if source is None:
            raise ValueError("searchrl-gloo trainer weight transfer requires a WeightSource")
        engine = cls(
            client=client,
            source=source,
            is_sender=init_info.is_sender,
            packed=False,
            packed_buffer_size_bytes=init_info.packed_buffer_size_bytes,
        )
        if not engine.is_sender:
            return engine
        worker = NCCLWeightTransferInitInfo(
            master_address=init_info.master_address,
            master_port=init_info.master_port,
            rank_offset=1,
            world_size=init_info.world_size,
            packed=False,
            packed_buffer_size_bytes=init_info.packed_buffer_size_bytes,
        )
        with ThreadPoolExecutor(max_workers=1) as exe:
            joined = exe.submit(client.init_weight_transfer_engine, worker_init_payload(worker))
            engine.model_update_group = _gloo_group(
                init_info.master_address, init_info.master_port, 0, init_info.world_size
            )
            joined.result()
        return engine

    def _broadcast(self, source: WeightSource, meta: list[ParamMeta]) -> None:
        assert self.model_update_group is not None, "trainer_init() must be called before _broadcast()"
        wire = [(m.name, tuple(m.shape), m.dtype) for m in meta]
        send_buckets(
            self._checked_iter(source, meta),
            wire,
            self.packed_buffer_size_bytes,
            _bcast(self.model_update_group),
        )

    def shutdown(self) -> None:
        self.model_update_group = None


class StateSource(WeightSource):
    """A `WeightSource` over a name -> tensor dict (the trainer's exported policy), in the dict's order."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(k, v.dtype, tuple(v.shape)) for k, v in self.state.items()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self.state.items()


class LocalWeightSyncClient:
    """vLLM's `VLLMWeightSyncClient` over an engine in this process (an `AsyncVllmEngine`), its coroutines run by
    `run` (e.g. `LoopThread(...).run`): a trainer and an engine side by side (tests, benchmarks). Across processes
    the rollout worker's gRPC control plane plays this part (services/trainer/push.py)."""

    def __init__(self, run: Callable[[Coroutine[Any, Any, Any]], Any], engine: Any) -> None:
        self.run, self.engine = run, engine

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.run(self.engine.init_transfer(init_info))

    def start_weight_update(self) -> None:
        self.run(self.engine.start_update())

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self.run(self.engine.update(update_info))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.run(self.engine.finish_update())


def push_backend(weight_sync: str) -> str | None:
    """The vLLM weight-transfer backend of a `trainer.weight_sync` value (None: the pull path)."""
    return {"nccl": "nccl", "gloo": GLOO}.get(weight_sync)


# The bucket size a backend pushes with when `trainer.weight_bucket_bytes` is null. gloo on CPU: 32 MiB was the
# fastest of 8 / 32 / 64 / 256 MiB (bench/weight_push.py); nccl: vLLM's packed broadcasts, sized for GPUs.
DEFAULT_BUCKET_BYTES = {"nccl": 256 << 20, GLOO: 32 << 20}


def bucket_bytes(backend: str, configured: int | None) -> int:
    """`trainer.weight_bucket_bytes` when set, else the backend's default."""
    return configured if configured is not None else DEFAULT_BUCKET_BYTES[backend]


def host_or_default(configured: str) -> str:
    """A host other processes reach this one on: `configured`, else $POD_IP (Helm sets it), else 127.0.0.1."""
    return configured or os.environ.get("POD_IP", "") or "127.0.0.1"


def register() -> None:
    """Add `searchrl-gloo` to vLLM's weight-transfer factories (idempotent; a vLLM general plugin)."""
    if GLOO not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(GLOO, GlooWeightTransferEngine)
    if GLOO not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(GLOO, GlooTrainerWeightTransferEngine)


def trainer_engine(
    backend: str,
    client: Any,
    source: WeightSource,
    master_address: str,
    master_port: int,
    world_size: int,
    bucket_bytes: int,
) -> NCCLTrainerWeightTransferEngine:
    """Trainer rank 0's engine for one inference engine group (see the module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(
            f"trainer.weight_sync: unknown push backend {backend!r} (one of {', '.join(BACKENDS)})"
        )
    register()
    kind = GlooTrainerInitInfo if backend == GLOO else NCCLTrainerInitInfo
    info = kind(master_address, master_port, world_size, packed_buffer_size_bytes=bucket_bytes, rank=0)
    return WeightTransferTrainerFactory.trainer_init(info, client=client, source=source)

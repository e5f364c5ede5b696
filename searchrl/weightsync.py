"""General weight-sync path (DESIGN.md section 1): the trainer publishes each policy version as one safetensors
payload; rollout workers pull it over a server-streaming gRPC call in chunks and reload from a local folder.

- `WeightStore` (trainer side): holds the newest published version; `publish(version, state_dict)` serialises,
  `chunks(min_version)` yields `WeightChunk`s of the newest version >= min_version.
- `pull_weights(stub, min_version, directory, timeout)` (worker side): writes
  `<directory>/v<version>-<uuid>/model.safetensors`, checks size and sha256, and returns (version, sha256, folder).
  It never leaves a partial folder behind and never touches other folders: several workers may share `directory`,
  so each caller deletes the folders it pulled itself once it no longer needs them.

The fast path (`trainer.weight_sync: nccl`, GPUs only): trainer rank 0 and the rollout engines' workers share a
process group; `broadcast_weights` sends the tensor list, then the tensors flattened into buckets of
`trainer.weight_bucket_bytes` (one collective per bucket, not per tensor, as TRL/verl do); `receive_weights`
yields (name, tensor) pairs in the sender's order, ready for a model's `load_weights`. Which group (NCCL across
GPUs; gloo in the CPU tests) is the caller's business.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save

from searchrl.proto import trainer_pb2

WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class Published:
    version: int
    payload: bytes
    sha256: str


def export_tensors(
    state: dict[str, torch.Tensor], dtype: torch.dtype | None, skip: set[str]
) -> dict[str, torch.Tensor]:
    """`state` as rollout workers load it: floating tensors cast to `dtype`, without the names in `skip` (e.g. a
    tied lm_head), contiguous, on their device. Uncast tensors may share storage with `state`."""
    tensors = {}
    for name, t in state.items():
        if name in skip:
            continue
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.contiguous()
    return tensors


def serialize_state_dict(state: dict[str, torch.Tensor], dtype: torch.dtype | None, skip: set[str]) -> bytes:
    """safetensors bytes of `export_tensors(state, dtype, skip)`."""
    return save({k: t.cpu() for k, t in export_tensors(state, dtype, skip).items()})


class WeightStore:
    """Newest published weights, shared between the training loop and the gRPC threads."""

    def __init__(self, chunk_bytes: int) -> None:
        self.chunk_bytes = chunk_bytes
        self._current: Published | None = None
        self._lock = threading.Lock()

    def publish(self, version: int, payload: bytes) -> Published:
        pub = Published(version, payload, hashlib.sha256(payload).hexdigest())
        with self._lock:
            self._current = pub
        return pub

    @property
    def current(self) -> Published | None:
        with self._lock:
            return self._current

    def chunks(self, min_version: int):  # noqa: ANN201 - generator of WeightChunk
        pub = self.current
        if pub is None or pub.version < min_version:
            have = -1 if pub is None else pub.version
            raise LookupError(f"version {min_version} not published yet (newest: {have})")
        total = len(pub.payload)
        view = memoryview(pub.payload)
        for off in range(0, max(total, 1), self.chunk_bytes):
            yield trainer_pb2.WeightChunk(
                version=pub.version,
                offset=off,
                total_bytes=total,
                data=bytes(view[off : off + self.chunk_bytes]),
                sha256=pub.sha256,
            )


_SINK_DEPTH = 4


def _absorb(f, h, data: bytes) -> None:  # noqa: ANN001 - a binary file, a hashlib object
    f.write(data)
    h.update(data)


def pull_weights(
    stub,
    min_version: int,
    directory: str | os.PathLike[str],  # noqa: ANN001 - TrainerStub
    timeout: float = 600.0,
) -> tuple[int, str, str]:
    base = Path(directory)
    base.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex  # unique per call: pids repeat across containers sharing a volume
    tmp = base / f".incoming-{token}"
    tmp.mkdir()
    h = hashlib.sha256()
    version, sha, total, written = -1, "", 0, 0
    try:
        # hashing and writing (both release the GIL) overlap the receiving of the next chunks, in order
        with open(tmp / WEIGHTS_FILE, "wb") as f, ThreadPoolExecutor(1, "weights-sink") as sink:
            pending: deque[Future] = deque()
            for chunk in stub.GetWeights(
                trainer_pb2.WeightsRequest(min_version=min_version), timeout=timeout
            ):
                if chunk.offset != written:
                    raise OSError(f"weight stream out of order: offset {chunk.offset}, expected {written}")
                version, sha, total = chunk.version, chunk.sha256, chunk.total_bytes
                pending.append(sink.submit(_absorb, f, h, chunk.data))
                written += len(chunk.data)
                if len(pending) > _SINK_DEPTH:  # bounds the chunks held in memory
                    pending.popleft().result()
            for p in pending:
                p.result()
        if written != total or h.hexdigest() != sha:
            raise OSError(
                f"weights v{version}: got {written}/{total} bytes, sha256 mismatch={h.hexdigest() != sha}"
            )
        final = base / f"v{version}-{token}"
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return version, sha, str(final)


@dataclass(frozen=True)
class Slot:
    """One tensor's place in a bucket: `offset` and `numel` in elements of the bucket's dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    numel: int


def plan_buckets(meta: list[tuple[str, tuple[int, ...], torch.dtype]], bucket_bytes: int) -> list[list[Slot]]:
    """Consecutive tensors of one dtype share a bucket while it stays within `bucket_bytes`; a larger tensor
    gets a bucket of its own. Sender and receivers compute the same plan from the same list."""
    if bucket_bytes < 1:
        raise ValueError(f"trainer.weight_bucket_bytes: {bucket_bytes} must be >= 1")
    buckets: list[list[Slot]] = []
    used = 0
    for name, shape, dtype in meta:
        numel = math.prod(shape)
        size = numel * dtype.itemsize
        last = buckets[-1] if buckets else None
        if last is None or last[0].dtype != dtype or used + size > bucket_bytes:
            buckets.append([])
            used = 0
        offset = used // dtype.itemsize
        buckets[-1].append(Slot(name, tuple(shape), dtype, offset, numel))
        used += size
    return buckets


Meta = list[tuple[str, tuple[int, ...], torch.dtype]]


def send_buckets(
    pairs: Iterator[tuple[str, torch.Tensor]], meta: Meta, bucket_bytes: int, bcast, device: str = "cpu"
) -> None:  # noqa: ANN001 - bcast(tensor) broadcasts a tensor from this rank in place
    """Sender side over any broadcast: `pairs` must yield the tensors of `meta` in its order; each bucket of
    `plan_buckets(meta)` is flattened on `device` and sent with one `bcast` call."""
    it = iter(pairs)
    for bucket in plan_buckets(meta, bucket_bytes):
        parts = [next(it)[1].detach().reshape(-1) for _ in bucket]
        bcast(torch.cat(parts).to(device))


def recv_buckets(
    meta: Meta, bucket_bytes: int, bcast, device: str = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:  # noqa: ANN001 - bcast(tensor) receives a broadcast into it
    """Receiver side of `send_buckets`: yields (name, tensor) in `meta`'s order, each a view of its bucket."""
    for bucket in plan_buckets(meta, bucket_bytes):
        flat = torch.empty(bucket[-1].offset + bucket[-1].numel, dtype=bucket[0].dtype, device=device)
        bcast(flat)
        for s in bucket:
            yield s.name, flat[s.offset : s.offset + s.numel].view(s.shape)


def broadcast_weights(
    state: dict[str, torch.Tensor], bucket_bytes: int, group, src: int = 0, device: str = "cpu"
) -> None:  # noqa: ANN001 - a torch.distributed ProcessGroup or None (the default group)
    """Sender side in a torch.distributed group: the tensor list, then one broadcast per bucket (on `device`)."""
    dist = torch.distributed
    meta = [(k, tuple(v.shape), v.dtype) for k, v in state.items()]
    dist.broadcast_object_list([(meta, bucket_bytes)], src=src, group=group)
    send_buckets(
        iter(state.items()), meta, bucket_bytes, lambda t: dist.broadcast(t, src=src, group=group), device
    )


def receive_weights(group, src: int = 0, device: str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:  # noqa: ANN001
    """Receiver side: yields (name, tensor) in the sender's order; each bucket is one broadcast into a buffer
    of its own, and the tensors are views of it."""
    dist = torch.distributed
    box: list[object] = [None]
    dist.broadcast_object_list(box, src=src, group=group)
    meta, bucket_bytes = box[0]  # type: ignore[misc]
    yield from recv_buckets(meta, bucket_bytes, lambda t: dist.broadcast(t, src=src, group=group), device)

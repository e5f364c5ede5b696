"""General weight-sync path (DESIGN.md section 1): the trainer publishes each policy version as one safetensors
payload; rollout workers pull it over a server-streaming gRPC call in chunks and reload from a local folder.

- `WeightStore` (trainer side): holds the newest published version; `publish(version, state_dict)` serialises,
  `chunks(min_version)` yields `WeightChunk`s of the newest version >= min_version.
- `pull_weights(stub, min_version, directory, timeout)` (worker side): writes
  `<directory>/v<version>-<uuid>/model.safetensors`, checks size and sha256, and returns (version, sha256, folder).
  It never leaves a partial folder behind and never touches other folders: several workers may share `directory`,
  so each caller deletes the folders it pulled itself once it no longer needs them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import uuid
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


def serialize_state_dict(state: dict[str, torch.Tensor], dtype: torch.dtype | None, skip: set[str]) -> bytes:
    """safetensors bytes of `state`, cast to `dtype`, without the names in `skip` (e.g. a tied lm_head)."""
    tensors = {}
    for name, t in state.items():
        if name in skip:
            continue
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.contiguous().cpu()
    return save(tensors)


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
        with open(tmp / WEIGHTS_FILE, "wb") as f:
            for chunk in stub.GetWeights(
                trainer_pb2.WeightsRequest(min_version=min_version), timeout=timeout
            ):
                if chunk.offset != written:
                    raise OSError(f"weight stream out of order: offset {chunk.offset}, expected {written}")
                version, sha, total = chunk.version, chunk.sha256, chunk.total_bytes
                f.write(chunk.data)
                h.update(chunk.data)
                written += len(chunk.data)
        if written != total or h.hexdigest() != sha:
            raise OSError(
                f"weights v{version}: got {written}/{total} bytes, sha256 mismatch={h.hexdigest() != sha}"
            )
        final = base / f"v{version}-{token}"
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return version, sha, str(final)

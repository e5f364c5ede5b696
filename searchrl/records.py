"""The two records that travel through Redis Streams, and their wire encoding.

- `PromptTask` (stream `prompts`): one question to sample a group of `group_size` responses for.
- `Trajectory` (stream `trajectories`): one scored response with its token ids, loss mask, behaviour log-probs.

Encoding: a stream entry is a flat field map. Scalars and small structures go into a `meta` JSON field; token
arrays go as raw little-endian bytes (int32 ids, uint8 mask, float32 log-probs), which is ~6x smaller and much
faster to decode than JSON lists. `decode_*` raise `ValueError` on malformed entries.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class PromptTask:
    task_id: str
    question: str
    golden_answers: list[str]
    group_size: int
    reward_preset: str
    min_policy_version: int = 0
    stage: str = ""

    def encode(self) -> dict[str, str]:
        return {"meta": json.dumps(asdict(self))}

    @staticmethod
    def decode(fields: dict[bytes | str, bytes | str]) -> PromptTask:
        meta = _meta(fields)
        try:
            return PromptTask(**meta)
        except TypeError as e:
            raise ValueError(f"malformed prompt task: {e}") from e


@dataclass
class Trajectory:
    traj_id: str  # f"{task_id}/{sample_index}": deterministic, so a re-done task yields the same ids
    task_id: str
    sample_index: int
    group_size: int
    policy_version: int
    prompt_ids: np.ndarray  # int32 [P]
    response_ids: np.ndarray  # int32 [R]
    loss_mask: np.ndarray  # uint8 [R]; 0 exactly on inserted document tokens
    logprobs: np.ndarray  # float32 [R]; behaviour log-probs of sampled tokens, 0 under mask==0
    reward: float
    metrics: dict[str, float] = field(default_factory=dict)  # em, cem, f1, format_ok, num_searches, timings
    finish_reason: str = ""
    stage: str = ""

    def encode(self) -> dict[str, bytes | str]:
        meta = {k: v for k, v in asdict(self).items() if not isinstance(v, np.ndarray)}
        return {
            "meta": json.dumps(meta),
            "prompt_ids": np.asarray(self.prompt_ids, dtype="<i4").tobytes(),
            "response_ids": np.asarray(self.response_ids, dtype="<i4").tobytes(),
            "loss_mask": np.asarray(self.loss_mask, dtype=np.uint8).tobytes(),
            "logprobs": np.asarray(self.logprobs, dtype="<f4").tobytes(),
        }

    @staticmethod
    def decode(fields: dict[bytes | str, bytes | str]) -> Trajectory:
        meta = _meta(fields)
        f = {k.decode() if isinstance(k, bytes) else k: v for k, v in fields.items()}
        try:
            arrays = {
                "prompt_ids": np.frombuffer(f["prompt_ids"], dtype="<i4"),
                "response_ids": np.frombuffer(f["response_ids"], dtype="<i4"),
                "loss_mask": np.frombuffer(f["loss_mask"], dtype=np.uint8),
                "logprobs": np.frombuffer(f["logprobs"], dtype="<f4"),
            }
            traj = Trajectory(**meta, **arrays)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed trajectory: {e}") from e
        n = len(traj.response_ids)
        if len(traj.loss_mask) != n or len(traj.logprobs) != n:
            raise ValueError(f"malformed trajectory {traj.traj_id}: response arrays differ in length")
        return traj


def _meta(fields: dict[bytes | str, bytes | str]) -> dict[str, Any]:
    raw = fields.get(b"meta", fields.get("meta"))
    if raw is None:
        raise ValueError("stream entry has no 'meta' field")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"stream entry 'meta' is not JSON: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError("stream entry 'meta' is not an object")
    return meta

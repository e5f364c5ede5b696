"""The two records that travel through Redis Streams, and their wire encoding.

- `PromptTask` (stream `prompts`): one question to sample a group of `group_size` responses for.
- `Trajectory` (stream `trajectories`): one scored response with its token ids, loss mask, behaviour log-probs.

Encoding: a stream entry is a flat field map. Scalars and small structures go into a `meta` JSON field; token
arrays go as raw little-endian bytes (int32 ids, uint8 mask, float32 log-probs), which is ~6x smaller and much
faster to decode than JSON lists. `decode_*` raise `ValueError` on malformed entries.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

MAX_TASK_ID_CHARS = 512
MAX_QUESTION_CHARS = 16_384
MAX_GROUP_SIZE = 1024  # samples per task: a worker allocates group_size x tasks_per_batch rollouts at once


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
        """Decode and validate one entry; `ValueError` "malformed prompt task: meta.<field>: ..." on a missing,
        unknown, mistyped or out-of-range field (a poison task must cost one dead-letter, not a worker)."""
        try:
            meta = _meta(fields)
            unknown = set(meta) - _TASK_META
            if unknown:
                raise ValueError(f"meta.{sorted(unknown)[0]}: unknown field")
            _check_str(meta, "task_id", required=True, limit=MAX_TASK_ID_CHARS)
            _check_str(meta, "question", required=True, limit=MAX_QUESTION_CHARS)
            answers = meta.get("golden_answers")
            if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
                raise ValueError("meta.golden_answers: must be a non-empty list of strings")
            _check_int(meta, "group_size", 1, MAX_GROUP_SIZE)
            _check_str(meta, "reward_preset", required=True)
            meta.setdefault("min_policy_version", 0)
            _check_int(meta, "min_policy_version", 0, _MAX_INT)
            _check_str(meta, "stage", required=False)
        except ValueError as e:
            raise ValueError(f"malformed prompt task: {e}") from None
        return PromptTask(**meta)


def task_id_of(fields: dict[bytes | str, bytes | str]) -> str | None:
    """The task id of a prompt task or trajectory entry that may be malformed otherwise; None when unreadable."""
    try:
        meta = _meta(fields)
        _check_str(meta, "task_id", required=True, limit=MAX_TASK_ID_CHARS)
    except ValueError:
        return None
    return meta["task_id"]


_TASK_META = {
    "task_id",
    "question",
    "golden_answers",
    "group_size",
    "reward_preset",
    "min_policy_version",
    "stage",
}


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
    def decode(
        fields: dict[bytes | str, bytes | str], vocab_size: int | None = None, max_tokens: int | None = None
    ) -> Trajectory:
        """Decode and validate one entry; `ValueError` naming the field on anything a learner could choke on
        (wrong types, NaN/inf reward or log-probs, token ids outside [0, vocab_size), a mask other than 0/1,
        prompt+response longer than `max_tokens`, an id that is not `task_id/sample_index`)."""
        meta = _meta(fields)
        unknown = set(meta) - _TRAJ_META
        if unknown:
            raise ValueError(f"meta.{sorted(unknown)[0]}: unknown field")
        for name in ("traj_id", "task_id"):
            _check_str(meta, name, required=True)
        for name in ("finish_reason", "stage"):
            _check_str(meta, name, required=False)
        for name in ("sample_index", "group_size", "policy_version"):
            _check_int(meta, name, 0, _MAX_INT)
        if meta["group_size"] < 1 or meta["sample_index"] >= meta["group_size"]:
            raise ValueError(
                f"meta.sample_index: {meta['sample_index']} not in [0, group_size={meta['group_size']})"
            )
        if meta["traj_id"] != f"{meta['task_id']}/{meta['sample_index']}":
            raise ValueError("meta.traj_id: must be task_id/sample_index")
        if not _finite(meta.get("reward")):
            raise ValueError(f"meta.reward: must be a finite number, got {meta.get('reward')!r}"[:200])
        metrics = meta.get("metrics", {})
        if not isinstance(metrics, dict) or not all(
            isinstance(k, str) and _finite(v) for k, v in metrics.items()
        ):
            raise ValueError("meta.metrics: must map names to finite numbers")
        f = {_field_name(k): v for k, v in fields.items()}
        arrays = {}
        for name, dtype in (("prompt_ids", "<i4"), ("response_ids", "<i4"), ("loss_mask", np.uint8)):
            arrays[name] = _array(f, name, dtype)
        arrays["logprobs"] = _array(f, "logprobs", "<f4")
        n = len(arrays["response_ids"])
        if len(arrays["loss_mask"]) != n or len(arrays["logprobs"]) != n:
            raise ValueError("loss_mask/logprobs: length differs from response_ids")
        if len(arrays["prompt_ids"]) == 0:
            raise ValueError("prompt_ids: empty")
        if max_tokens is not None and len(arrays["prompt_ids"]) + n > max_tokens:
            raise ValueError(
                f"response_ids: prompt+response of {len(arrays['prompt_ids']) + n} tokens > {max_tokens}"
            )
        for name in ("prompt_ids", "response_ids"):
            ids = arrays[name]
            if len(ids) and (ids.min() < 0 or (vocab_size is not None and ids.max() >= vocab_size)):
                raise ValueError(f"{name}: token id outside [0, {vocab_size})")
        if n and arrays["loss_mask"].max() > 1:
            raise ValueError("loss_mask: values must be 0 or 1")
        if n and not np.isfinite(arrays["logprobs"]).all():
            raise ValueError("logprobs: not finite")
        return Trajectory(**{**meta, "reward": float(meta["reward"])}, **arrays)


_TRAJ_META = {
    "traj_id",
    "task_id",
    "sample_index",
    "group_size",
    "policy_version",
    "reward",
    "metrics",
    "finish_reason",
    "stage",
}
_MAX_INT = 2**62


def _finite(v: Any) -> bool:
    """A real number (not a bool) that is finite as a float; a huge int (10**400) is not."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _field_name(k: bytes | str) -> str:
    if isinstance(k, str):
        return k
    try:
        return k.decode()
    except UnicodeDecodeError:
        raise ValueError(f"fields: a field name is not UTF-8: {k[:40]!r}") from None


def _check_str(meta: dict[str, Any], name: str, required: bool, limit: int = 512) -> None:
    v = meta.get(name, "")
    if not isinstance(v, str) or (required and not v) or len(v) > limit:
        raise ValueError(
            f"meta.{name}: must be a {'non-empty ' if required else ''}string of <= {limit} chars"
        )


def _check_int(meta: dict[str, Any], name: str, lo: int, hi: int) -> None:
    v = meta.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"meta.{name}: must be an integer in [{lo}, {hi}], got {v!r}"[:200])


def _array(f: dict[str, Any], name: str, dtype: Any) -> np.ndarray:
    raw = f.get(name)
    if not isinstance(raw, (bytes, bytearray)):
        raise ValueError(f"{name}: missing or not bytes")
    width = np.dtype(dtype).itemsize
    if len(raw) % width:
        raise ValueError(f"{name}: {len(raw)} bytes is not a multiple of {width}")
    return np.frombuffer(raw, dtype=dtype)


def _meta(fields: dict[bytes | str, bytes | str]) -> dict[str, Any]:
    raw = fields.get(b"meta", fields.get("meta"))
    if raw is None:
        raise ValueError("stream entry has no 'meta' field")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as e:  # bad JSON, not UTF-8, or nested deeper than the parser goes
        raise ValueError(f"meta: not a JSON object ({type(e).__name__}: {str(e)[:100]})") from None
    if not isinstance(meta, dict):
        raise ValueError("stream entry 'meta' is not an object")
    return meta

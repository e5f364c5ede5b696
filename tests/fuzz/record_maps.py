"""Hypothesis strategies of bad Redis stream entries for the two records (searchrl/records.py): the field map of
a valid PromptTask or Trajectory with fields kept (mostly), replaced by hostile JSON values (wrong types, NaN/inf,
huge and negative numbers, unicode) or dropped, unknown fields added, the `meta` JSON truncated, nested past the
parser's recursion limit or replaced by random bytes, and token arrays with out-of-range ids, odd byte lengths,
non-finite log-probs and mismatched lengths. Keys and values are bytes, as redis-py returns them."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from hypothesis import strategies as st

from searchrl.records import MAX_GROUP_SIZE, MAX_QUESTION_CHARS, MAX_TASK_ID_CHARS
from tests.fuzz.strategies import INT32, ints, lists_of, mostly, texts

MARK = b"fuzz-seq"  # added by the tests to find an entry again (e.g. in a dead-letter stream)


class Fields(dict):
    """A stream entry's field map whose falsifying-example printout cuts long values (meta nested 100,000 deep)."""

    def _repr_pretty_(self, p, cycle: bool) -> None:  # noqa: ANN001 - Hypothesis' pretty-printer hook
        cut = {k: v if len(v) <= 300 else v[:300] + b"...(%d bytes)" % len(v) for k, v in self.items()}
        p.text(repr(cut))


_HUGE = st.sampled_from([10**400, -(10**400), 2**63, 2**62 + 1, -(2**31) - 1])
JSON_SCALARS = st.one_of(st.none(), st.booleans(), ints(-(2**64), 2**64), _HUGE, st.floats(), texts(32))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def json_or(*specific: st.SearchStrategy) -> st.SearchStrategy:
    """One of `specific` (values hostile to one field) or any JSON value."""
    return st.one_of(*specific, JSON_VALUES)


def _broken(base: dict[str, Any]) -> st.SearchStrategy[set[str]]:
    """Which fields to break: mostly none, else one or two."""
    return mostly(st.just(set()), st.sets(st.sampled_from(sorted(base)), min_size=1, max_size=2), odds=2)


@st.composite
def meta_of(draw: st.DrawFn, base: dict[str, Any], hostile: dict[str, st.SearchStrategy]) -> dict:
    """`base` with up to two fields replaced by a hostile value or dropped (the others stay valid, so each
    field's own check is reached); now and then an unknown field."""
    broken = draw(_broken(base))
    meta = {}
    for key, value in base.items():
        if key not in broken:
            meta[key] = value
        elif draw(st.booleans()):
            meta[key] = draw(hostile.get(key, JSON_VALUES))
    if draw(st.integers(0, 9)) == 0:
        meta[draw(st.text(max_size=8))] = draw(JSON_VALUES)
    return meta


@st.composite
def meta_bytes(draw: st.DrawFn, metas: st.SearchStrategy) -> bytes:
    """Mostly a value of `metas` as JSON (NaN/Infinity spelled as json.dumps does); else that JSON truncated or
    after a byte that is not UTF-8, another JSON value, random bytes, or arrays nested 10 to 100,000 deep."""
    text = json.dumps(draw(metas))
    how = draw(mostly(st.just("json"), st.sampled_from(["cut", "other", "bytes", "latin1", "deep"])))
    if how == "json":
        return text.encode()
    if how == "cut":
        return text[: draw(st.integers(0, len(text) - 1))].encode()
    if how == "other":
        return json.dumps(draw(JSON_VALUES)).encode()
    if how == "bytes":
        return draw(st.binary(max_size=48))
    if how == "latin1":
        return b"\xff" + text.encode()
    depth = draw(st.sampled_from([10, 1000, 100_000]))
    return ("[" * depth + "]" * depth).encode()


_ASCII = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
_FIELD_NAMES = mostly(
    st.text(_ASCII, min_size=1, max_size=8).map(str.encode), st.binary(min_size=1, max_size=8)
)


@st.composite
def entry(draw: st.DrawFn, base: dict[str, Any], hostile: dict[str, st.SearchStrategy]) -> dict[bytes, bytes]:
    """A stream entry from a valid one (`base`: "meta" -> dict, array fields -> bytes): its meta through
    `meta_of` and `meta_bytes`; up to two fields (meta included) replaced (`hostile[name]`) or dropped; up to two
    unknown fields."""
    broken = draw(_broken(base))
    fields: dict[bytes, bytes] = {}
    for key, value in base.items():
        if key in broken and draw(st.booleans()):
            continue  # dropped
        if key == "meta":
            fields[b"meta"] = draw(meta_bytes(JSON_VALUES if key in broken else meta_of(value, hostile)))
        else:
            fields[key.encode()] = draw(hostile[key]) if key in broken else value
    extra = _FIELD_NAMES.filter(lambda k: k not in fields and k != MARK)
    fields.update(draw(st.dictionaries(extra, st.binary(max_size=16), max_size=2)))
    return Fields(fields or {b"x": b""})


def seeds(valid: dict[str, Any]) -> list[dict[bytes, bytes]]:
    """A seed corpus from a valid entry (`entry`'s `base`), of inputs known to break decoders and too rare to rely
    on generation for: meta nested past the JSON parser's recursion limit, each numeric meta field (and a
    metric) beyond float range, meta that is not UTF-8, a field name that is not UTF-8."""
    meta = valid["meta"]
    arrays = {k.encode(): v for k, v in valid.items() if k != "meta"}

    def with_meta(raw: bytes) -> Fields:
        return Fields({b"meta": raw, **arrays})

    text = json.dumps(meta).encode()
    out = [
        with_meta(b"[" * 100_000 + b"]" * 100_000),
        with_meta(b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
        with_meta(b"\xff" + text),
        Fields({**with_meta(text), b"\xff": b""}),
    ]
    for key, value in meta.items():
        if type(value) in (int, float):
            out.append(with_meta(json.dumps({**meta, key: 10**400}).encode()))
    if "metrics" in meta:
        out.append(with_meta(json.dumps({**meta, "metrics": {"em": 10**400}}).encode()))
    return out


# ---- PromptTask -----------------------------------------------------------------------------------------------


def prompt_task_base(task_id: str) -> dict[str, Any]:
    return {
        "meta": {
            "task_id": task_id,
            "question": "Who founded Saldane Press?",
            "golden_answers": ["Orlen Vask"],
            "group_size": 2,
            "reward_preset": "r1s-stage1",
            "min_policy_version": 0,
            "stage": "stage1",
        }
    }


PROMPT_HOSTILE = {
    "task_id": json_or(texts(MAX_TASK_ID_CHARS)),
    "question": json_or(texts(MAX_QUESTION_CHARS)),
    "golden_answers": json_or(lists_of(texts(64), 4, many=300), texts(8)),
    "group_size": json_or(ints(-(2**63), 2**63, 1, MAX_GROUP_SIZE, 10**9)),
    "reward_preset": json_or(texts(16)),
    "min_policy_version": json_or(ints(-(2**63), 2**63, 2**62)),
    "stage": json_or(texts(512)),
}


def prompt_entries(task_id: str = "t") -> st.SearchStrategy[dict[bytes, bytes]]:
    return entry(prompt_task_base(task_id), PROMPT_HOSTILE)


# ---- Trajectory -----------------------------------------------------------------------------------------------


def _packed(values: st.SearchStrategy, dtype: str) -> st.SearchStrategy[bytes]:
    return st.lists(values, max_size=16).map(lambda xs: np.asarray(xs, dtype=dtype).tobytes())


def trajectory_hostile(vocab_size: int) -> dict[str, st.SearchStrategy]:
    ids = _packed(ints(*INT32, vocab_size), "<i4")
    return {
        "traj_id": json_or(texts(32)),
        "task_id": json_or(texts(32)),
        "sample_index": json_or(ints(-(2**63), 2**63, 2, 2**62)),
        "group_size": json_or(ints(-(2**63), 2**63, 2, 2**62)),
        "policy_version": json_or(ints(-(2**63), 2**63, 2**62)),
        "reward": json_or(st.floats(), _HUGE),
        "metrics": json_or(st.dictionaries(texts(8), JSON_SCALARS, max_size=3)),
        "finish_reason": json_or(texts(512)),
        "stage": json_or(texts(512)),
        "prompt_ids": st.one_of(ids, st.binary(max_size=40)),
        "response_ids": st.one_of(ids, st.binary(max_size=40)),
        "loss_mask": st.one_of(_packed(st.integers(0, 255), "u1"), st.binary(max_size=16)),
        "logprobs": st.one_of(_packed(st.floats(width=32), "<f4"), st.binary(max_size=40)),
    }


def trajectory_base(encoded: dict[str, bytes | str]) -> dict[str, Any]:
    """A valid Trajectory.encode() map as `entry` takes it."""
    return {k: json.loads(v) if k == "meta" else v for k, v in encoded.items()}

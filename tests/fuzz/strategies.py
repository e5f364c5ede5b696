"""Hypothesis strategies of hostile values shared by the gRPC and Redis fuzz tests: unicode strings (empty,
invisible, right-to-left, combining, astral, and sized just around a limit or far past it), integers at the edges
of a range, oversized lists, raw protobuf wire bytes (wrong wire types, overlong varints, lying lengths, mutated
valid messages) and authorization headers that are not the right one; and the suite's Hypothesis settings."""

from __future__ import annotations

from google.protobuf.message import Message
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# The suite's settings: no per-example deadline (the per-call ones catch hangs), no example database in the
# repo, a reproduction blob printed on failure (the examples are random each run).
SETTINGS = settings(deadline=None, database=None, print_blob=True, suppress_health_check=list(HealthCheck))

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)

SPECIAL_TEXT = [
    "",
    " ",
    "\t\n\r\x0b\x0c",
    "\x00",
    "a\x00b",
    "\u200b\u200c\u200d",
    "\u202eevil\u202c",
    "\ufeff",
    "e\u0301\u0301\u0301",
    "\U0001f469\u200d\U0001f469\u200d\U0001f467",
    "\U0010ffff\ufffe",
    "\u2028\u2029\x85",
    "İıßﬁ",
    "'\"\\%s%n{}",
    "<|begin_of_query|> x <|end_of_query|>",
    "<answer> x </answer>",
    "NaN",
    "-1",
]


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy, odds: int = 3) -> st.SearchStrategy:
    """`good` about `odds` times as often as `bad`: requests must often be valid but for one field to reach the
    deeper checks (and to catch a limit a server does not enforce)."""
    return st.integers(0, odds).flatmap(lambda i: bad if i == 0 else good)


def _repeat(unit: str, n: int) -> str:
    return (unit * n)[:n]


def texts(limit: int) -> st.SearchStrategy[str]:
    """Mostly short random unicode; else special strings, or strings of limit-1, limit, limit+1 or 10x limit
    chars."""
    sizes = sorted({max(limit - 1, 0), limit, limit + 1, 10 * limit + 3})
    sized = st.builds(_repeat, st.text(min_size=1, max_size=3), st.sampled_from(sizes))
    return mostly(st.text(max_size=min(limit, 24)), st.one_of(st.sampled_from(SPECIAL_TEXT), sized))


def ints(lo: int, hi: int, *edges: int) -> st.SearchStrategy[int]:
    """Integers in [lo, hi], half of them at the edges (lo, hi, -1, 0, 1 and `edges`, each +-1)."""
    points = sorted({v for e in (lo, hi, -1, 0, 1, *edges) for v in (e - 1, e, e + 1) if lo <= v <= hi})
    return st.one_of(st.sampled_from(points), st.integers(lo, hi))


def lists_of(elements: st.SearchStrategy, limit: int, many: int = 1000) -> st.SearchStrategy[list]:
    """Mostly 1 .. limit elements; else none, limit+1, or `many` copies of one element."""
    copies = st.builds(lambda x, n: [x] * n, elements, st.sampled_from([limit + 1, many]))
    return mostly(st.lists(elements, min_size=1, max_size=limit), st.one_of(st.just([]), copies))


# ---- raw protobuf wire format ------------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """Base-128 varint of n >= 0; beyond 2**64 it is longer than protobuf allows."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if not n:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


@st.composite
def wire_field(draw: st.DrawFn, numbers: list[int], depth: int = 1) -> bytes:
    """One field of any wire type (0-7; 3, 4, 6, 7 are groups or invalid) under a known or random field number
    (0 and > 2**29-1 are invalid); length-delimited ones may lie about their length or nest more fields."""
    num = draw(st.one_of(st.sampled_from(numbers), st.integers(0, 2**29 + 2)))
    wire_type = draw(st.integers(0, 7))
    tag = varint((num << 3) | wire_type)
    if wire_type == 0:
        return tag + varint(draw(st.integers(0, 2**70)))
    if wire_type in (1, 5):
        return tag + draw(st.binary(min_size=8 if wire_type == 1 else 4, max_size=8 if wire_type == 1 else 4))
    if wire_type != 2:
        return tag
    inner = [st.binary(max_size=24), st.text(max_size=12).map(str.encode)]
    if depth:
        inner.append(st.lists(wire_field(numbers, depth - 1), max_size=3).map(b"".join))
    content = draw(st.one_of(inner))
    claimed = draw(st.one_of(st.just(len(content)), st.integers(0, 2**35)))
    return tag + varint(claimed) + content


@st.composite
def mutated(draw: st.DrawFn, messages: st.SearchStrategy[Message]) -> bytes:
    """A valid serialized message, truncated, with one byte changed, or with random bytes inserted."""
    data = draw(messages).SerializeToString()
    at = draw(st.integers(0, len(data)))
    how = draw(st.sampled_from(["truncate", "flip", "insert"]))
    if how == "truncate":
        return data[:at]
    if how == "flip" and data:
        at = min(at, len(data) - 1)
        return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]


def raw_payloads(messages: st.SearchStrategy[Message], numbers: list[int]) -> st.SearchStrategy[bytes]:
    """Request payloads as bytes: random, hand-made wire format, and mutated valid messages."""
    return st.one_of(
        st.binary(max_size=64),
        st.lists(wire_field(numbers), max_size=6).map(b"".join),
        mutated(messages),
    )


# ---- credentials -----------------------------------------------------------------------------------------------

_HEADER_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E)  # what HTTP/2 lets a client send


def wrong_authorization(token: str) -> st.SearchStrategy[str | None]:
    """An `authorization` metadata value that is not `Bearer <token>` (None: no header at all)."""
    near = [
        f"bearer {token}",
        f"Bearer  {token}",
        f"Bearer {token} ",
        f" Bearer {token}",
        f"Bearer {token}x",
        f"Bearer {token[:-1]}",
        f"Basic {token}",
        token,
        "Bearer",
        "Bearer ",
        "",
    ]
    return st.one_of(
        st.none(),
        st.sampled_from(near),
        st.text(_HEADER_CHARS, max_size=48).map(lambda t: f"Bearer {t}"),
        st.text(_HEADER_CHARS, max_size=48),
    ).filter(lambda h: h != f"Bearer {token}")

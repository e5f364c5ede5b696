"""Sends generated inputs to one gRPC method of a real server and judges each reply.

An input is one of:
- `Typed`: a well-typed request with hostile values, through `searchrl.grpcutil.channel` (the token attached);
- `Raw`: arbitrary bytes as the request payload, same channel;
- `BadAuth`: a well-typed request without the token or with a wrong `authorization` header;
- `Oversize`: a payload past the 64 MiB message limit, through a channel that lets it leave.

Judgement (`Api.expect` is the documented contract of a decodable request):
- no reply may take the whole per-call deadline (DEADLINE_EXCEEDED is a hang);
- a decodable request gets exactly `Api.expect(request)` (OK, INVALID_ARGUMENT, FAILED_PRECONDITION), and an
  INVALID_ARGUMENT message starts with a path of request fields (`items[3].golden_answers[1]: ...`);
- an undecodable payload gets INVALID_ARGUMENT naming `request` (the servicer never runs); a bad credential UNAUTHENTICATED without echoing the token; an oversized payload RESOURCE_EXHAUSTED;
- an OK reply passes `Api.check_ok`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import strategies as st

from searchrl.grpcutil import MAX_MESSAGE_BYTES
from tests.fuzz.strategies import raw_payloads, wrong_authorization

CALL_TIMEOUT_S = 10.0
OK = grpc.StatusCode.OK


@dataclass(frozen=True)
class Api:
    name: str  # "Retriever.Search"
    method: str  # "/searchrl.v1.Retriever/Search"
    request: type[Message]
    typed: st.SearchStrategy[Message]
    expect: Callable[[Message], grpc.StatusCode]
    check_ok: Callable[[Message, list[bytes]], None]
    valid: Message  # must succeed, before and after the run
    streaming: bool = False  # server-streaming reply


@dataclass(frozen=True)
class Typed:
    request: Message


@dataclass(frozen=True)
class Raw:
    payload: bytes


@dataclass(frozen=True)
class BadAuth:
    request: Message
    authorization: str | None


@dataclass(frozen=True)
class Oversize:
    nbytes: int


# Hypothesis shrinks towards the first kind; an oversized payload (65+ MiB) is rare to keep the suite fast.
_KINDS = ["typed"] * 10 + ["raw"] * 6 + ["auth"] * 3 + ["oversize"]


@st.composite
def inputs(draw: st.DrawFn, api: Api, token: str) -> Typed | Raw | BadAuth | Oversize:
    kind = draw(st.sampled_from(_KINDS))
    if kind == "typed":
        return Typed(draw(api.typed))
    if kind == "raw":
        numbers = [f.number for f in api.request.DESCRIPTOR.fields] or [1]
        return Raw(draw(raw_payloads(api.typed, numbers)))
    if kind == "auth":
        return BadAuth(draw(api.typed), draw(wrong_authorization(token)))
    return Oversize(MAX_MESSAGE_BYTES + draw(st.sampled_from([1, 1 << 20])))


@dataclass
class Channels:
    """`good` carries the token (searchrl.grpcutil.channel); `plain` carries nothing and sends anything."""

    address: str
    token: str
    good: grpc.Channel
    plain: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.plain = grpc.insecure_channel(self.address, options=[("grpc.max_send_message_length", -1)])

    def close(self) -> None:
        self.good.close()
        self.plain.close()


def call(
    ch: grpc.Channel, api: Api, payload: bytes, metadata: list[tuple[str, str]] | None = None
) -> tuple[grpc.StatusCode, str, list[bytes]]:
    """One call with the per-call deadline; (code, details, reply messages as bytes)."""
    make = ch.unary_stream if api.streaming else ch.unary_unary
    stub = make(api.method, request_serializer=None, response_deserializer=None)
    try:
        reply = stub(payload, timeout=CALL_TIMEOUT_S, metadata=metadata)
        return OK, "", list(reply) if api.streaming else [reply]
    except grpc.RpcError as e:
        return e.code(), e.details() or "", []


def send(chs: Channels, api: Api, item: Typed | Raw | BadAuth | Oversize) -> str:
    """Send one input and judge the reply (AssertionError on a wrong one); returns the status code's name."""
    bearer = [("authorization", f"Bearer {chs.token}")]
    if isinstance(item, Typed):
        code, details, replies = call(chs.good, api, item.request.SerializeToString())
        _judge_decoded(api, item.request, code, details, replies)
    elif isinstance(item, Raw):
        code, details, replies = call(chs.good, api, item.payload)
        try:
            request = api.request.FromString(item.payload)
        except DecodeError:
            assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("request: "), (
                code,
                details,
            )
        else:
            _judge_decoded(api, request, code, details, replies)
    elif isinstance(item, BadAuth):
        header = [] if item.authorization is None else [("authorization", item.authorization)]
        code, details, _ = call(chs.plain, api, item.request.SerializeToString(), header)
        assert code == grpc.StatusCode.UNAUTHENTICATED, (code, details)
        assert "security.token_file" in details and chs.token not in details, details
    else:
        code, details, _ = call(chs.plain, api, bytes(item.nbytes), bearer)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
    return code.name


def _judge_decoded(
    api: Api, request: Message, code: grpc.StatusCode, details: str, replies: list[bytes]
) -> None:
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"hang: no reply within {CALL_TIMEOUT_S}s"
    want = api.expect(request)
    assert code == want, f"got {code.name} ({details[:300]!r}), want {want.name}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert names_field(details, api.request.DESCRIPTOR), f"no request field named in {details[:300]!r}"
    if code == OK:
        api.check_ok(request, replies)


_SEGMENT = re.compile(r"([a-z_][a-z0-9_]*)(\[\d+\])?")


def names_field(details: str, desc: Descriptor) -> bool:
    """Does `details` start with a path of fields of the request, like `items[3].golden_answers[1]:`?"""
    path, sep, _ = details.partition(":")
    if not sep:
        return False
    segments = path.split(".")
    for i, segment in enumerate(segments):
        m = _SEGMENT.fullmatch(segment)
        f = desc.fields_by_name.get(m.group(1)) if m and desc is not None else None
        if f is None:
            return False
        desc = f.message_type
        if desc is None and i < len(segments) - 1:
            return False
    return True


def assert_healthy(chs: Channels, api: Api) -> None:
    """grpc.health.v1 says SERVING and the API's valid request still succeeds."""
    health = health_pb2_grpc.HealthStub(chs.good).Check(
        health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    code, details, replies = call(chs.good, api, api.valid.SerializeToString())
    assert code == OK, (code, details)
    api.check_ok(api.valid, replies)

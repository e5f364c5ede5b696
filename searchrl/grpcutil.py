"""gRPC plumbing shared by the four services: server start-up with grpc.health.v1 and Prometheus, credentials on
both ends, client channels, health waits, the mapping of domain `ValueError`s to INVALID_ARGUMENT, and a cap on
concurrent long streams.

Contract (the settings are `config.SecurityConfig`):
- A server with a bearer token (security.token_file / SEARCHRL_TOKEN) answers every RPC but grpc.health.v1 with
  UNAUTHENTICATED unless the call carries `authorization: Bearer <token>`; with TLS (security.tls_cert) it serves
  TLS, and with tls_client_auth it requires client certificates (mTLS). A server with neither credential binds
  loopback only, and another address needs security.insecure.
- `channel(address, security)` is the one way to call a service: it brings the token and TLS settings along.
- `Server(..., health_port=N)` also serves grpc.health.v1 in plain text on port N from its own two threads, so
  probes are answered while long RPCs (weight streams) hold every worker thread.
- Servers close each connection after MAX_CONNECTION_AGE_MS (in-flight calls finish) and clients re-resolve DNS,
  so the replicas an autoscaler adds get traffic.
It knows nothing about any particular service.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import Counter, Histogram, start_http_server

from searchrl.config import ConfigError, SecurityConfig, read_token

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 << 20
MAX_CONNECTION_AGE_MS = 5 * 60_000
# A sync server queues RPCs beyond its threads; past this many per thread it answers RESOURCE_EXHAUSTED instead
# of letting a flood grow the queue (and the latency of everything behind it) without bound.
RPCS_PER_WORKER = 8
HEALTH_PREFIX = "/grpc.health.v1.Health/"
_MESSAGE_LIMITS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
_SERVER_OPTIONS = [
    *_MESSAGE_LIMITS,
    ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
    # Accept the clients' 30 s keepalive pings (the default minimum, 5 min, answers them with GOAWAY).
    ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
]
_CHANNEL_OPTIONS = [
    *_MESSAGE_LIMITS,
    # Balance per request over every address DNS returns (a headless Service gives one per pod).
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.keepalive_time_ms", 30_000),
    # A GOAWAY (connection age) makes the channel re-resolve; at most this often.
    ("grpc.dns_min_time_between_resolutions_ms", 10_000),
]
_UNAUTHENTICATED = (
    "missing or wrong bearer token (metadata 'authorization: Bearer <token>'; the token comes from "
    "security.token_file or SEARCHRL_TOKEN)"
)

RPC_SECONDS = Histogram("searchrl_rpc_seconds", "Server-side RPC latency", ["service", "method"])
RPC_ERRORS = Counter(
    "searchrl_rpc_errors_total", "RPCs answered with an error status", ["service", "method", "code"]
)
AUTH_FAILURES = Counter("searchrl_auth_failures_total", "RPCs refused as UNAUTHENTICATED", ["method"])

F = TypeVar("F", bound=Callable[..., Any])


class InvalidArgument(ValueError):
    """Bad request content; `field` names the offending request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def rpc(service: str) -> Callable[[F], F]:
    """Decorate a unary servicer method: time it, and turn `ValueError` into INVALID_ARGUMENT (the message
    names the field) and any other exception into INTERNAL, so bad input never kills the server."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(self, request, context)
            except ValueError as e:
                RPC_ERRORS.labels(service, fn.__name__, "INVALID_ARGUMENT").inc()
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            except grpc.RpcError:
                raise
            except Exception as e:  # noqa: BLE001 - the RPC boundary: report, never crash the server
                if getattr(context, "code", lambda: None)() is not None:
                    raise  # context.abort() already set a status
                log.exception("%s.%s failed", service, fn.__name__)
                RPC_ERRORS.labels(service, fn.__name__, "INTERNAL").inc()
                context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
            finally:
                RPC_SECONDS.labels(service, fn.__name__).observe(time.perf_counter() - t0)

        return inner  # type: ignore[return-value]

    return wrap


def bind_host(security: SecurityConfig, credential: bool) -> str:
    """The address servers listen on: security.bind_host, else all interfaces with a credential and loopback
    without one. No credential and a non-loopback address is an error unless security.insecure."""
    host = security.bind_host or ("[::]" if credential else "127.0.0.1")
    if credential:
        return host
    if _is_loopback(host):
        log.warning(
            "no credential configured (security.token_file / SEARCHRL_TOKEN, or TLS with tls_client_auth): "
            "serving on loopback %s only",
            host,
        )
    elif security.insecure:
        log.warning(
            "serving WITHOUT authentication on %s (security.insecure): anyone there can call any RPC", host
        )
    else:
        raise ConfigError(
            f"security.bind_host: {host} is not a loopback address and no credential is configured "
            "(security.token_file / SEARCHRL_TOKEN, or TLS with tls_client_auth); set security.insecure=true "
            "to serve unauthenticated anyway"
        )
    return host


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def _pem(security: SecurityConfig, field: str) -> bytes:
    path = getattr(security, field)
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as e:
        raise ConfigError(f"security.{field} ({path}): cannot read: {e.strerror}") from None


class _TokenAuth(grpc.ServerInterceptor):
    """Refuses every RPC but grpc.health.v1 whose `authorization` metadata is not `Bearer <token>`."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(got, self._expected):
                    return handler
        AUTH_FAILURES.labels(details.method).inc()
        return _refusal(handler)


@dataclass(frozen=True)
class _Undecodable:
    error: str


class _DecodeErrors(grpc.ServerInterceptor):
    """An undecodable request payload gets INVALID_ARGUMENT naming `request`, like any other bad input (grpc's
    own answer would be INTERNAL "Exception deserializing request!")."""

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if (
            handler is None
            or handler.request_streaming
            or handler.request_deserializer is None
            or details.method.startswith(HEALTH_PREFIX)
        ):
            return handler
        parse, method = handler.request_deserializer, details.method

        def deserialize(payload: bytes) -> Any:
            try:
                return parse(payload)
            except Exception as e:  # noqa: BLE001 - any parser failure is the caller's bad input
                return _Undecodable(f"{type(e).__name__}: {e}"[:200])

        def check(request: Any, context: grpc.ServicerContext) -> None:
            if isinstance(request, _Undecodable):
                RPC_ERRORS.labels("grpc", method, "INVALID_ARGUMENT").inc()
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"request: not a valid {method} message ({request.error})",
                )

        if handler.response_streaming:
            inner_stream = handler.unary_stream

            def streaming(request: Any, context: grpc.ServicerContext) -> Any:
                check(request, context)
                yield from inner_stream(request, context)

            return grpc.unary_stream_rpc_method_handler(
                streaming, request_deserializer=deserialize, response_serializer=handler.response_serializer
            )
        inner = handler.unary_unary

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            check(request, context)
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=deserialize, response_serializer=handler.response_serializer
        )


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED without running it."""

    def refuse(_request: Any, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, _UNAUTHENTICATED)

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    # no request deserializer: an unauthenticated payload is never parsed (a garbage or huge one gets
    # UNAUTHENTICATED too, not a parse error)
    return make(refuse, request_deserializer=None, response_serializer=handler.response_serializer)


def _add_port(server: grpc.Server, host: str, port: int, creds: grpc.ServerCredentials | None) -> int:
    address = f"{host}:{port}"
    try:
        bound = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {address}")
    return bound


class Server:
    """A gRPC server with the health service and the credentials of `security`, a Prometheus HTTP endpoint
    (`metrics_port`, 0 = none) and, with `health_port`, a plain-text grpc.health.v1-only server on its own
    threads. All of them listen on `bind_host(security, ...)`."""

    def __init__(
        self, port: int, metrics_port: int, workers: int, security: SecurityConfig, health_port: int = 0
    ) -> None:
        token = read_token(security)
        self.host = bind_host(security, credential=bool(token) or security.tls_client_auth)
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
            interceptors=[_TokenAuth(token), _DecodeErrors()] if token else [_DecodeErrors()],
            options=_SERVER_OPTIONS,
            maximum_concurrent_rpcs=workers * RPCS_PER_WORKER,
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        creds = None
        if security.tls_cert:
            creds = grpc.ssl_server_credentials(
                [(_pem(security, "tls_key"), _pem(security, "tls_cert"))],
                root_certificates=_pem(security, "tls_ca") if security.tls_ca else None,
                require_client_auth=security.tls_client_auth,
            )
        self.port = _add_port(self.grpc, self.host, port, creds)
        self._health_grpc: grpc.Server | None = None
        self.health_port = 0
        if health_port:
            self._health_grpc = grpc.server(
                futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"),
                options=_SERVER_OPTIONS,
            )
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_grpc)
            self.health_port = _add_port(self._health_grpc, self.host, health_port, None)
        self.metrics_port = metrics_port
        self._service_names: list[str] = []

    def add(self, register: Callable[[Any, grpc.Server], None], servicer: Any, name: str) -> None:
        register(servicer, self.grpc)
        self._service_names.append(name)

    def start(self, serving: bool = True) -> None:
        if self.metrics_port:
            # "[::]" is gRPC's spelling of all interfaces; the HTTP server's (IPv4, as before) is 0.0.0.0.
            start_http_server(
                self.metrics_port, addr="0.0.0.0" if self.host == "[::]" else self.host.strip("[]")
            )
        self.grpc.start()
        if self._health_grpc is not None:
            self._health_grpc.start()
        self.set_serving(serving)
        log.info(
            "gRPC on %s:%d, health on :%d, metrics on :%d (%s)",
            self.host,
            self.port,
            self.health_port,
            self.metrics_port,
            ", ".join(self._service_names),
        )

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._service_names]:
            self.health.set(name, status)

    def stop(self, grace: float = 2.0) -> None:
        self.set_serving(False)
        if self._health_grpc is not None:
            self._health_grpc.stop(0)
        self.grpc.stop(grace).wait()


class StreamLimit:
    """At most `limit` concurrent long RPCs of one kind (weight streams), so they cannot take every server
    thread. `enter(context)` aborts the RPC with RESOURCE_EXHAUSTED naming `field` when all slots are taken, and
    frees the slot when the RPC ends, however it ends (completion, error, client cancel)."""

    def __init__(self, limit: int, field: str) -> None:
        self.limit = limit
        self.field = field
        self._slots = threading.BoundedSemaphore(limit)

    def enter(self, context: grpc.ServicerContext) -> None:
        if not self._slots.acquire(blocking=False):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.limit} streams already in flight ({self.field}); retry later",
            )
        if not context.add_callback(self._slots.release):
            self._slots.release()  # the RPC already ended


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call of a plain-text channel."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(d.metadata or ()), self._header]
        return _CallDetails(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready, d.compression)

    def intercept_unary_unary(
        self, continuation: Callable, details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(
        self, continuation: Callable, details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._details(details), request)


def channel(address: str, security: SecurityConfig) -> grpc.Channel:
    """A channel with the project's message limits, per-request round-robin balancing and DNS re-resolution,
    carrying the credentials of `security`: TLS when tls_cert is set (presenting it as client certificate with
    tls_client_auth), and the bearer token when one is configured."""
    target = address if "://" in address or address.startswith("dns:") else f"dns:///{address}"
    token = read_token(security)
    if security.tls_cert:
        mine = security.tls_client_auth
        creds = grpc.ssl_channel_credentials(
            root_certificates=_pem(security, "tls_ca") if security.tls_ca else None,
            private_key=_pem(security, "tls_key") if mine else None,
            certificate_chain=_pem(security, "tls_cert") if mine else None,
        )
        if token:
            creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
        return grpc.secure_channel(target, creds, options=_CHANNEL_OPTIONS)
    plain = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
    return grpc.intercept_channel(plain, _BearerToken(token)) if token else plain


def is_serving(address: str, security: SecurityConfig, timeout: float = 1.0) -> bool:
    try:
        with channel(address, security) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        return resp.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def wait_serving(
    addresses: Iterable[str],
    security: SecurityConfig,
    timeout: float,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Block until every address answers SERVING; `alive` returning False aborts early (a child died)."""
    pending = list(addresses)
    deadline = time.monotonic() + timeout
    while pending:
        pending = [a for a in pending if not is_serving(a, security)]
        if not pending:
            return
        if alive is not None and not alive():
            raise RuntimeError(f"a service exited before it became healthy (waiting for {pending})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not healthy after {timeout:.0f}s: {pending}")
        time.sleep(0.3)


_RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


def retrying(call: Callable[[], Any], attempts: int = 5, delay: float = 0.5) -> Any:
    """Retry a client call on UNAVAILABLE (a service restarting or a replica going away) and RESOURCE_EXHAUSTED
    (a server shedding load past its maximum_concurrent_rpcs), with jittered exponential backoff."""
    for i in range(attempts):
        try:
            return call()
        except grpc.RpcError as e:
            if e.code() not in _RETRIED or i == attempts - 1:
                raise
            time.sleep(delay * (2**i) * (0.5 + random.random()))
    raise AssertionError("unreachable")

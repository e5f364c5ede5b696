"""gRPC plumbing shared by the four services: server start-up with grpc.health.v1 and Prometheus, client
channels, health waits, and the mapping of domain `ValueError`s to INVALID_ARGUMENT.

It knows nothing about any particular service.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 << 20
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Balance per request over every address DNS returns (a headless Service gives one per pod).
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.keepalive_time_ms", 30_000),
]

RPC_SECONDS = Histogram("searchrl_rpc_seconds", "Server-side RPC latency", ["service", "method"])
RPC_ERRORS = Counter(
    "searchrl_rpc_errors_total", "RPCs answered with an error status", ["service", "method", "code"]
)

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


class Server:
    """A gRPC server with the health service, plus a Prometheus HTTP endpoint."""

    def __init__(self, port: int, metrics_port: int, workers: int, host: str = "[::]") -> None:
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers),
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        bound = self.grpc.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise OSError(f"cannot bind gRPC port {port}")
        self.port = bound
        self.metrics_port = metrics_port
        self._service_names: list[str] = []

    def add(self, register: Callable[[Any, grpc.Server], None], servicer: Any, name: str) -> None:
        register(servicer, self.grpc)
        self._service_names.append(name)

    def start(self, serving: bool = True) -> None:
        if self.metrics_port:
            start_http_server(self.metrics_port)
        self.grpc.start()
        self.set_serving(serving)
        log.info(
            "gRPC on :%d, metrics on :%d (%s)", self.port, self.metrics_port, ", ".join(self._service_names)
        )

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._service_names]:
            self.health.set(name, status)

    def stop(self, grace: float = 2.0) -> None:
        self.set_serving(False)
        self.grpc.stop(grace).wait()


def channel(address: str) -> grpc.Channel:
    """An insecure channel with the project's message limits and per-request round-robin balancing."""
    target = address if "://" in address or address.startswith("dns:") else f"dns:///{address}"
    return grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)


def is_serving(address: str, timeout: float = 1.0) -> bool:
    try:
        with channel(address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        return resp.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def wait_serving(addresses: Iterable[str], timeout: float, alive: Callable[[], bool] | None = None) -> None:
    """Block until every address answers SERVING; `alive` returning False aborts early (a child died)."""
    pending = list(addresses)
    deadline = time.monotonic() + timeout
    while pending:
        pending = [a for a in pending if not is_serving(a)]
        if not pending:
            return
        if alive is not None and not alive():
            raise RuntimeError(f"a service exited before it became healthy (waiting for {pending})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not healthy after {timeout:.0f}s: {pending}")
        time.sleep(0.3)


def retrying(call: Callable[[], Any], attempts: int = 5, delay: float = 0.5) -> Any:
    """Retry a client call on UNAVAILABLE (a service restarting or a replica going away)."""
    for i in range(attempts):
        try:
            return call()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or i == attempts - 1:
                raise
            time.sleep(delay * (2**i))
    raise AssertionError("unreachable")

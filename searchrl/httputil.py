"""What every HTTP server of the project (FastAPI on uvicorn) shares with the gRPC servers: the bearer token, the
422 answer naming the request field, and TLS from `security`.

- `require_bearer_token(app, token, open_paths)`: with a token, every path but `open_paths` needs
  `Authorization: Bearer <token>` (401 otherwise, counted in searchrl_auth_failures_total like gRPC refusals);
- `report_bad_fields(app)`: a payload that fails validation gets 422 {"detail": "<field>: <message>"} naming the
  request's own field (bad JSON: "body");
- `uvicorn_tls(security)`: uvicorn's TLS (and mTLS) arguments for the `security` section.
This module knows nothing about any endpoint.
"""

from __future__ import annotations

import hmac
import ssl
from collections.abc import Callable, Collection
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from searchrl.config import SecurityConfig
from searchrl.grpcutil import AUTH_FAILURES

UNAUTHENTICATED = (
    "missing or wrong bearer token (header 'Authorization: Bearer <token>'; the token comes from "
    "security.token_file or SEARCHRL_TOKEN)"
)


def field_name(loc: tuple[Any, ...]) -> str:
    """('body', 'queries', 1) -> 'queries[1]'; ('body',) -> 'body'."""
    parts = [str(x) for x in loc[1:]] if len(loc) > 1 and loc[0] == "body" else [str(x) for x in loc]
    out = parts[0] if parts else "body"
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def require_bearer_token(app: FastAPI, token: str, open_paths: Collection[str] = ("/health",)) -> None:
    """Refuse requests without the bearer token (none configured: everything is open)."""
    if not token:
        return
    expected = f"Bearer {token}".encode()

    @app.middleware("http")
    async def bearer_token(request: Request, call_next: Callable) -> Any:
        if request.url.path not in open_paths:
            got = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(got, expected):
                AUTH_FAILURES.labels(f"http {request.url.path}").inc()
                return JSONResponse({"detail": UNAUTHENTICATED}, 401, {"WWW-Authenticate": "Bearer"})
        return await call_next(request)


def report_bad_fields(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_payload(_request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {"loc": ("body",), "msg": "invalid"}
        field = "body" if first.get("type") == "json_invalid" else field_name(tuple(first["loc"]))
        return JSONResponse({"detail": f"{field}: {first['msg']}"}, 422)


def uvicorn_tls(security: SecurityConfig) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for TLS (none without security.tls_cert)."""
    if not security.tls_cert:
        return {}
    tls: dict[str, Any] = {"ssl_certfile": security.tls_cert, "ssl_keyfile": security.tls_key}
    if security.tls_ca:
        tls["ssl_ca_certs"] = security.tls_ca
    if security.tls_client_auth:
        tls["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return tls

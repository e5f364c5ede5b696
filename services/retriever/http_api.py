"""The seeds' HTTP retrieval APIs (FastAPI on uvicorn), served beside gRPC in the same process and answered by the
same `Retriever` (validation, cache, batcher), so the seeds' own training scripts can point at this retriever.

Endpoints, payloads as the seeds' servers take and give them (DESIGN.md section 3):
- R1-Searcher  POST /queries       {"queries": [..], "k": 3} -> {"queries": [..], "answers": [[document, ..], ..]}
  with each document "Title: text", as this project's rollouts insert it.
- Search-R1    POST /retrieve      {"queries": [..], "topk": 3, "return_scores": false}
  -> {"result": [[{"id", "contents"}, ..], ..]}, or with scores {"result": [[{"document": {"id", "contents"},
  "score"}, ..], ..]}; contents is Search-R1's corpus form '"Title"\\ntext'.
- ReSearch     POST /batch_search  {"query": [..], "top_n": 10, "return_score": false} -> [[{"id", "contents"}]],
  or [documents, scores] with return_score; GET /health -> {"status": "healthy", ...}.
A partial answer (a shard missed its deadline) is a 200 with the hits that came and the missing shards in the
X-Searchrl-Shard-Errors header (gRPC: the searchrl-shard-errors trailer). Errors: 422 {"detail": "<field>: <message>"} names the request's own field (bad JSON: "body"); 401 without
`Authorization: Bearer <token>` when a token is configured (every endpoint but /health, like gRPC's health);
503 while stopping or when more than `limit` requests are open; 504 on `timeout_s`; 500 when the back end fails.
TLS (and mTLS) follow `security` as for gRPC. Unknown request fields are ignored, as the seeds' servers do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel

from searchrl.config import SecurityConfig, read_token
from searchrl.grpcutil import InvalidArgument
from searchrl.httputil import report_bad_fields, require_bearer_token, uvicorn_tls
from searchrl_retriever.backend import Hit, Results
from searchrl_retriever.batcher import BatcherClosed
from searchrl_retriever.service import Retriever, describe_shard_errors

log = logging.getLogger(__name__)

SHARD_ERRORS_HEADER = "X-Searchrl-Shard-Errors"  # on a partial answer: the shards that did not answer


class R1SearcherRequest(BaseModel):
    queries: list[str]
    k: int = 3


class SearchR1Request(BaseModel):
    queries: list[str]
    topk: int = 3
    return_scores: bool = False


class ReSearchRequest(BaseModel):
    query: list[str]
    top_n: int = 10
    return_score: bool = False


def _contents(hit: Hit) -> dict[str, str]:
    p = hit.passage
    return {"id": p.id, "contents": f'"{p.title}"\n{p.text}' if p.title else p.text}


def make_app(retriever: Retriever, token: str, threads: int = 40, timeout_s: float | None = None) -> FastAPI:
    """The endpoints over `retriever`; `threads` bounds the requests waiting for their batch at once."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        yield

    app = FastAPI(
        title="searchrl retriever", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    require_bearer_token(app, token, open_paths=("/health",))
    report_bad_fields(app)

    def search(queries: list[str], k: int, fields: tuple[str, str], response: Response) -> Results:
        try:
            rows = retriever.search(queries, k, timeout=timeout_s, api="http", fields=fields)
        except InvalidArgument as e:
            raise HTTPException(422, str(e)) from None
        except TimeoutError as e:
            raise HTTPException(504, str(e)) from None
        except BatcherClosed as e:
            raise HTTPException(503, str(e)) from None
        except Exception as e:  # noqa: BLE001 - the API boundary: report, never crash the server
            log.exception("HTTP search failed")
            raise HTTPException(500, f"{type(e).__name__}: {e}") from None
        if rows.partial:
            response.headers[SHARD_ERRORS_HEADER] = describe_shard_errors(rows.shard_errors)
        return rows

    # Plain `def` endpoints: FastAPI runs them on its worker threads, where they wait for their batch.
    @app.post("/queries")
    def r1_searcher(body: R1SearcherRequest, response: Response) -> dict[str, Any]:
        rows = search(body.queries, body.k, ("queries", "k"), response)
        return {"queries": body.queries, "answers": [[h.passage.as_document() for h in row] for row in rows]}

    @app.post("/retrieve")
    def search_r1(body: SearchR1Request, response: Response) -> dict[str, Any]:
        rows = search(body.queries, body.topk, ("queries", "topk"), response)
        if body.return_scores:
            return {"result": [[{"document": _contents(h), "score": h.score} for h in row] for row in rows]}
        return {"result": [[_contents(h) for h in row] for row in rows]}

    @app.post("/batch_search")
    def research(body: ReSearchRequest, response: Response) -> Any:
        rows = search(body.query, body.top_n, ("query", "top_n"), response)
        docs = [[_contents(h) for h in row] for row in rows]
        return [docs, [[h.score for h in row] for row in rows]] if body.return_score else docs

    @app.get("/health")
    def health() -> dict[str, Any]:
        info = retriever.backend.info()
        return {"status": "healthy", "passages": info.num_passages, "embedder": info.embedder}

    return app


class HttpServer:
    """uvicorn serving `make_app` on its own thread (and event loop); `start()` returns once it listens."""

    def __init__(
        self, retriever: Retriever, host: str, port: int, security: SecurityConfig, threads: int, limit: int
    ) -> None:
        config = uvicorn.Config(
            make_app(retriever, read_token(security), threads),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            limit_concurrency=limit,
            timeout_graceful_shutdown=5,
            **uvicorn_tls(security),
        )
        self.port = port
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the retriever's HTTP server did not start on port {self.port} (in use?)")
            time.sleep(0.02)
        log.info("HTTP APIs (/queries, /retrieve, /batch_search, /health) on :%d", self.port)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

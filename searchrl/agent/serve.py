"""`searchrl serve agent`: config -> tokenizer, retriever, async engine -> `Agent` -> the app on uvicorn.

The model is `--model` (an HF folder such as <run_dir>/hf/step_N, or builtin:NAME) or the config's model.path.
Search is the config's retriever built in process (`open_retriever`, as `searchrl eval` does: the index is
loaded, or built once), or with `--retriever ADDR` a running retriever service over gRPC with the config's
credentials. The prompt, protocol and limits are the config's rollout section, so the served agent searches as
it was trained to. Listens as the gRPC services do (`security.bind_host`: loopback without a credential), with
the bearer token and TLS of `security`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from searchrl.agent.loop import Agent
from searchrl.config import Config, read_token
from searchrl.protocol import Document, get_protocol
from searchrl_rollout.search_loop import LoopLimits, SearchFn

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080
MAX_OPEN_REQUESTS = 64  # uvicorn answers 503 beyond this many open connections


def _search(cfg: Config, address: str | None) -> tuple[SearchFn, Any]:
    """(search function, what to close) for the in-process retriever, or the service at `address`."""
    if address:
        from searchrl.grpcutil import channel
        from searchrl.proto import retriever_pb2_grpc
        from searchrl_rollout.server import grpc_search

        ch = channel(address, cfg.security)
        return grpc_search(retriever_pb2_grpc.RetrieverStub(ch)), ch
    from searchrl_retriever.service import open_retriever

    retriever = open_retriever(cfg, progress=True)

    def search(queries: list[str], k: int) -> list[list[Document]]:
        return [[Document(p.title, p.text) for p, _ in row] for row in retriever.search(queries, k)]

    return search, retriever


@contextmanager
def open_agent(cfg: Config, model_path: str, retriever: str | None) -> Iterator[Agent]:
    from transformers import AutoTokenizer

    from searchrl_rollout.async_engine import AsyncVllmEngine

    rc = cfg.rollout
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    search, closing = _search(cfg, retriever)
    engine = AsyncVllmEngine.from_config(model_path, rc, cfg.run.seed)
    try:
        yield Agent(
            engine,
            search,
            tokenizer,
            get_protocol(rc.protocol),
            LoopLimits.from_config(rc, cfg.retriever),
            rc.max_prompt_tokens,
            cfg.model.chat_template,
            rc.system_prompt,
            rc.examples,
        )
    finally:
        engine.shutdown()
        closing.close()


def serve_agent(cfg: Config, model: str | None, port: int | None, retriever: str | None) -> int:
    """Serve until SIGINT/SIGTERM (uvicorn's own handlers stop it gracefully)."""
    import uvicorn

    from searchrl.agent.app import make_app
    from searchrl.grpcutil import bind_host
    from searchrl.httputil import uvicorn_tls
    from searchrl.models import resolve_model

    port = port or DEFAULT_PORT
    model_path = resolve_model(model or cfg.model.path, cfg.model.cache_dir, cfg.run.seed)
    token = read_token(cfg.security)
    host = bind_host(cfg.security, credential=bool(token) or cfg.security.tls_client_auth)
    info = {
        "model": model_path,
        "protocol": cfg.rollout.protocol,
        "retriever": retriever or f"in process ({cfg.retriever.mode}, {cfg.retriever.corpus})",
    }
    app = make_app(lambda: open_agent(cfg, model_path, retriever), token, info)
    log.info("serving the agent (%s) on port %d", ", ".join(f"{k} {v}" for k, v in info.items()), port)
    uvicorn.run(
        app,
        # "[::]" is gRPC's spelling of all interfaces; uvicorn's (IPv4, like the metrics endpoint) is 0.0.0.0.
        host="0.0.0.0" if host == "[::]" else host.strip("[]"),
        port=port,
        log_level="info",
        access_log=False,
        limit_concurrency=MAX_OPEN_REQUESTS,
        timeout_graceful_shutdown=5,
        **uvicorn_tls(cfg.security),
    )
    return 0

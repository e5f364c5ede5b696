"""The agent's HTTP API and page (FastAPI), over an `Agent` (loop.py) opened when the app starts.

- POST /v1/answer {"question", "stream": false, "temperature": 0.0}: greedy by default (temperature in
  [0, MAX_TEMPERATURE]). JSON answer: {"question", "answer", "response", "finish_reason", "searches", "turns",
  "trace": [segment / search / inserted events], "timings"}. With "stream": true, or `Accept: text/event-stream`,
  Server-Sent Events as the loop makes them: `event: token|segment|search|inserted|answer` with the event as JSON
  `data` (loop.py lists the fields), or a final `event: error` if generation fails midway. A client that goes
  away aborts its generation.
- GET / : the page (static/index.html: plain HTML + JS, no build step); GET /health: model, protocol, retriever.
- Errors: 422 {"detail": "<field>: <message>"} for a bad payload (an empty question, a prompt over
  rollout.max_prompt_tokens, ...); 401 without `Authorization: Bearer <token>` when a token is configured (the
  page and /health stay open, as health does for gRPC); 500 when the engine fails before the answer starts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from searchrl.agent.loop import Agent, Event
from searchrl.grpcutil import InvalidArgument
from searchrl.httputil import report_bad_fields, require_bearer_token

log = logging.getLogger(__name__)

PAGE = Path(__file__).parent / "static" / "index.html"
MAX_QUESTION_CHARS = 4096  # the prompt-token limit decides; this only spares tokenizing a huge payload
MAX_TEMPERATURE = 2.0
OPEN_PATHS = ("/", "/health")


class AnswerRequest(BaseModel):
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    stream: bool = False
    temperature: float = Field(0.0, ge=0.0, le=MAX_TEMPERATURE)


def sse(event: Event) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"


async def _sse_stream(events: AsyncIterator[Event]) -> AsyncIterator[str]:
    try:
        async for e in events:
            yield sse(e)
    except Exception as e:  # noqa: BLE001 - the stream has started: report in it, the status is sent
        log.exception("answer failed")
        yield sse({"type": "error", "detail": f"{type(e).__name__}: {e}"})


def _answer_json(question: str, events: list[Event]) -> dict[str, Any]:
    final = events[-1]
    trace = [e for e in events if e["type"] not in ("token", "answer")]
    return {"question": question, **{k: v for k, v in final.items() if k != "type"}, "trace": trace}


def make_app(
    open_agent: Callable[[], AbstractContextManager[Agent]], token: str, info: dict[str, Any]
) -> FastAPI:
    """The app; `open_agent()` is entered at startup (engine, retriever) and left at shutdown. `info` is shown
    by /health and the page."""
    state: dict[str, Agent] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        with open_agent() as agent:
            state["agent"] = agent
            yield

    app = FastAPI(title="searchrl agent", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    require_bearer_token(app, token, OPEN_PATHS)
    report_bad_fields(app)

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", **info}

    @app.post("/v1/answer", response_model=None)
    async def answer(body: AnswerRequest, request: Request) -> JSONResponse | StreamingResponse:
        agent = state["agent"]
        try:
            prompt = agent.prompt_ids(body.question)
        except InvalidArgument as e:
            raise HTTPException(422, str(e)) from None
        events = agent.answer(prompt, body.temperature)
        if body.stream or "text/event-stream" in request.headers.get("accept", ""):
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(_sse_stream(events), media_type="text/event-stream", headers=headers)
        try:
            done = [e async for e in events]
        except Exception as e:  # noqa: BLE001 - the API boundary: report, never crash the server
            log.exception("answer failed")
            raise HTTPException(500, f"{type(e).__name__}: {e}") from None
        return JSONResponse(_answer_json(body.question, done))

    return app

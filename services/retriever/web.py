"""Web search back end (retriever.mode web): SerpApi's Google Search API over HTTPS. R1-Searcher evaluates
Bamboogle with online search; this puts a search engine behind the same Search RPC.

Contract:
- Off unless configured: only mode web builds one. The API key is read from `web.key_file` (a mounted
  Kubernetes Secret) or else the env var `web.key_env`; without one, `from_config` raises ValueError naming both.
- Per query one GET `<endpoint>?engine=<engine>&q=<query>&num=<k>&api_key=<key>`; the queries of a batch go
  out concurrently (`web.concurrency`). SerpApi's documented answer is JSON with `organic_results`, a list of
  {"position", "title", "link", "snippet", ...}; each becomes Passage(id=link, title, text=snippet) with score
  1/position, best first, at most k.
- An answer `{"error": "... hasn't returned any results ..."}` is an empty row; any other error (HTTP status,
  `error` field, timeout, bad JSON) raises `WebSearchError` with the provider's message. The key never appears
  in a message or a log line.
This module knows nothing of gRPC.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from searchrl.config import WebConfig
from searchrl_retriever.backend import BackendInfo, Hit, Results
from searchrl_retriever.corpus import Passage
from searchrl_retriever.metrics import STAGE_SECONDS

_NO_RESULTS = "hasn't returned any results"


class WebSearchError(ConnectionError):
    """The provider did not answer a query (its message, never the key)."""


def read_key(wc: WebConfig) -> str:
    if wc.key_file:
        try:
            key = Path(wc.key_file).read_text().strip()
        except OSError as e:
            raise ValueError(f"retriever.web.key_file ({wc.key_file}): cannot read: {e.strerror}") from None
    else:
        key = os.environ.get(wc.key_env, "").strip()
    if not key:
        raise ValueError(
            f"retriever.web: mode web needs an API key in retriever.web.key_file or the env var {wc.key_env}"
        )
    return key


def parse_results(payload: object, k: int) -> list[Hit]:
    """Hits of one SerpApi answer (see the module docstring)."""
    if not isinstance(payload, dict):
        raise WebSearchError("web search: the answer is not a JSON object")
    if "error" in payload:
        if _NO_RESULTS in str(payload["error"]):
            return []
        raise WebSearchError(f"web search: {payload['error']}")
    hits = []
    for i, r in enumerate(payload.get("organic_results") or [], start=1):
        if isinstance(r, dict) and r.get("link"):
            position = r.get("position") if isinstance(r.get("position"), int) and r["position"] > 0 else i
            hits.append(
                Hit(Passage(str(r["link"]), str(r.get("title", "")), str(r.get("snippet", ""))), 1 / position)
            )
    return sorted(hits, key=lambda h: -h.score)[:k]


class WebBackend:
    mode = "web"

    def __init__(self, wc: WebConfig, key: str) -> None:
        self.wc = wc
        self._key = key
        self.fingerprint = f"web:{wc.endpoint}:{wc.engine}"
        self._pool = ThreadPoolExecutor(max_workers=wc.concurrency, thread_name_prefix="web")

    @staticmethod
    def from_config(wc: WebConfig) -> WebBackend:
        return WebBackend(wc, read_key(wc))

    def info(self) -> BackendInfo:
        return BackendInfo(0, 0, f"serpapi:{self.wc.engine}", "web")

    def search_batch(self, queries: list[str], k: int) -> Results:
        t0 = time.perf_counter()
        rows = list(self._pool.map(lambda q: self._search(q, k), queries))
        STAGE_SECONDS.labels("web", "").observe(time.perf_counter() - t0)
        return Results(rows)

    def _search(self, query: str, k: int) -> list[Hit]:
        params = {"engine": self.wc.engine, "q": query, "num": k, "api_key": self._key}
        url = f"{self.wc.endpoint}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.wc.timeout_s) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise WebSearchError(f"web search: HTTP {e.code}: {_error_of(e)}") from None
        except (urllib.error.URLError, TimeoutError) as e:
            raise WebSearchError(f"web search: {getattr(e, 'reason', e)}") from None
        except ValueError:
            raise WebSearchError("web search: the answer is not JSON") from None
        return parse_results(payload, k)


def _error_of(e: urllib.error.HTTPError) -> str:
    """SerpApi's `error` message of an HTTP error answer, else the reason phrase."""
    try:
        return str(json.loads(e.read()).get("error") or e.reason)
    except (ValueError, AttributeError, OSError):
        return str(e.reason)

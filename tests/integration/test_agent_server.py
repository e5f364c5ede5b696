"""`searchrl serve agent` as a real process (real vLLM with the tiny searcher, the retriever in process, a bearer
token) answered over HTTP: JSON answers with their trace, SSE streams, bad payloads, auth, the page; and the same
server against a running retriever service (`--retriever ADDR`)."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from searchrl.protocol import R1_SEARCHER
from tests.conftest import ROOT, tiny_config_at
from tests.integration.agent_kit import sse_events, start_agent, stop_agent

TOKEN = "agent-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUESTION = "In which city was Orlen Vask born?"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    work = tmp_path_factory.mktemp("agent")
    cfg = tiny_config_at(work / "run")
    cfg.security.bind_host = "127.0.0.1"
    proc, base = start_agent(cfg, work, "agent", env={"SEARCHRL_TOKEN": TOKEN})
    yield base
    stop_agent(proc)


def ask(url: str, payload: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/answer", json=payload, headers={**AUTH, **(headers or {})}, timeout=300)


def check_answer(body: dict) -> None:
    """The tiny searcher's trained shape: a segment ending in a query, its search, then the answer."""
    trace = body["trace"]
    assert [e["type"] for e in trace[:2]] == ["segment", "search"]
    first, search = trace[0], trace[1]
    assert first["stop"] == R1_SEARCHER.query_close and first["text"] in body["response"]
    assert search["query"] == R1_SEARCHER.extract_query(first["text"]) and search["error"] is None
    assert 1 <= len(search["passages"]) <= 2  # tiny.yaml: rollout.top_k 2
    assert all(p["text"] for p in search["passages"]) and search["inserted"] in body["response"]
    assert body["searches"] == sum(e["type"] == "search" for e in trace)
    assert body["finish_reason"] and body["turns"] == sum(e["type"] == "segment" for e in trace)
    assert set(body["timings"]) == {"generate_s", "retrieve_s", "total_s"}
    assert body["timings"]["total_s"] >= body["timings"]["generate_s"]


def test_json_answer_with_its_trace_greedy_and_concurrent(url):
    resp = ask(url, {"question": QUESTION})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["question"] == QUESTION and "answer" in body
    check_answer(body)
    with ThreadPoolExecutor(3) as pool:
        again = list(pool.map(lambda _: ask(url, {"question": QUESTION}).json(), range(3)))
    assert all(a["response"] == body["response"] for a in again)  # greedy, concurrent or not


@pytest.mark.parametrize("how", ["stream-field", "accept-header"])
def test_sse_streams_tokens_then_the_trace_and_the_answer(url, how):
    payload, headers = (
        ({"question": QUESTION, "stream": True}, {})
        if how == "stream-field"
        else (
            {"question": QUESTION},
            {"Accept": "text/event-stream"},
        )
    )
    with httpx.stream(
        "POST", f"{url}/v1/answer", json=payload, headers={**AUTH, **headers}, timeout=300
    ) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = sse_events(resp.iter_lines())
    names = [n for n, _ in events]
    assert names[0] == "token" and names[-1] == "answer" and "search" in names
    data = [json.loads(d) for _, d in events]
    assert all(d["type"] == n for n, d in zip(names, data, strict=True))
    # the tokens before each segment event add up to that segment's text
    text = ""
    for d in data:
        if d["type"] == "token":
            text += d["text"]
        elif d["type"] == "segment":
            assert text == d["text"]
            text = ""
    final = data[-1]
    whole = ask(url, {"question": QUESTION}).json()
    assert final["response"] == whole["response"] and final["answer"] == whole["answer"]


@pytest.mark.parametrize(
    "payload, field",
    [
        ({}, "question: Field required"),
        ({"question": ""}, "question: String should have at least 1 character"),
        ({"question": "   "}, "question: is empty"),
        ({"question": "x " * 1000}, "question: the prompt has"),
        ({"question": "x" * 5000}, "question: String should have at most 4096 characters"),
        ({"question": QUESTION, "temperature": 9}, "temperature: Input should be less than or equal to 2"),
        (
            {"question": QUESTION, "temperature": -1},
            "temperature: Input should be greater than or equal to 0",
        ),
        ({"question": ["a"]}, "question: Input should be a valid string"),
    ],
)
def test_bad_payloads_get_422_naming_the_field(url, payload, field):
    resp = ask(url, payload)
    assert resp.status_code == 422 and resp.json()["detail"].startswith(field), resp.text


def test_bad_json_names_the_body(url):
    resp = httpx.post(
        f"{url}/v1/answer", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert resp.status_code == 422 and resp.json()["detail"].startswith("body:")


def test_the_token_is_required_but_the_page_and_health_are_open(url):
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
        resp = httpx.post(f"{url}/v1/answer", json={"question": QUESTION}, headers=headers, timeout=30)
        assert resp.status_code == 401 and "bearer token" in resp.json()["detail"] and TOKEN not in resp.text
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="question"' in page.text and "/v1/answer" in page.text
    health = httpx.get(f"{url}/health").json()
    assert (
        health["status"] == "ok" and health["protocol"] == "r1searcher" and "tiny-searcher" in health["model"]
    )


def test_a_running_retriever_service_over_grpc(retriever_and_reward, tmp_path):
    cfg = tiny_config_at(tmp_path / "run")  # no corpus needed: --retriever replaces it
    cfg.retriever.corpus = str(tmp_path / "absent.jsonl")
    cfg.addresses.retriever = retriever_and_reward.addresses.retriever
    proc, base = start_agent(cfg, tmp_path, "agent-grpc", "--retriever", cfg.addresses.retriever)
    try:
        assert httpx.get(f"{base}/health").json()["retriever"] == cfg.addresses.retriever
        resp = httpx.post(f"{base}/v1/answer", json={"question": QUESTION}, timeout=300)
        assert resp.status_code == 200, resp.text
        check_answer(resp.json())
    finally:
        stop_agent(proc)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["serve", "reward", "--port", "9"],
            "--model / --port / --retriever: only for `searchrl serve agent`",
        ),
        (["serve", "agent", "--model", "/nonexistent/model"], "'/nonexistent/model' is not a folder"),
    ],
)
def test_cli_mistakes_exit_2_with_a_message(args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "searchrl.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]

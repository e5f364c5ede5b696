"""LLM-as-judge with R1-Searcher's True/False protocol, over any OpenAI-compatible chat endpoint.

Contract:
- `judge_prompt` is the seed's prompt (R1-Searcher evaluation/metric_calc_gpt_as_judge.py), its trailing newline and
  four spaces included; the question, the golden answer and the prediction go in as the seed formats them (a
  missing prediction prints as "None"; several golden aliases are listed with "; ", the seed had one string).
- `parse_verdict` is the seed's reading of the reply: correct only when the reply IS the string "True" (no
  stripping, no case folding); anything else, "True." included, counts as wrong. The raw reply is kept so that a
  reader can re-grade.
- `JudgeClient.verdicts` sends one user message per item to `<url>/chat/completions` (max_tokens 1024 as the seed;
  temperature 0 so that a rerun gives the same verdicts, where the seed left the API's default), a few at a time;
  an unreachable endpoint or an HTTP error raises `JudgeError` naming the URL.
- `local_judge_server` starts vLLM's OpenAI server on a local model for the duration of a `with` block (offline
  judging), logging to a file, and stops it after.
This module knows nothing of how answers were produced; the API key comes from the environment variable the caller
names, never from the config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from searchrl.redisio import free_port

# R1-Searcher's judge prompt, verbatim (the trailing "\n    " is the seed's: its triple-quoted string ends so).
_PROMPT = (
    "Given a Question and its Golden Answer, verify whether the Predicted Answer is correct. The prediction is "
    "correct if it fully aligns with the meaning and key information of the Golden Answer. Respond with True if "
    "the prediction is correct and False otherwise.\n\nQuestion: {question}\nGolden Answer: {reference}\n"
    "Predicted Answer: {prediction}\n    "
)
MAX_TOKENS = 1024  # R1-Searcher's judge call


class JudgeError(RuntimeError):
    """The judge endpoint could not be used; the message names its URL."""


def judge_prompt(question: str, golden_answers: Sequence[str], prediction: str | None) -> str:
    return _PROMPT.format(question=question, reference="; ".join(golden_answers), prediction=prediction)


def parse_verdict(reply: str | None) -> bool:
    """R1-Searcher counts a prediction as correct when the judge's reply equals "True" exactly."""
    return reply == "True"


class JudgeClient:
    """Chat completions at `url` (an OpenAI-compatible base URL ending in /v1) with `model`."""

    def __init__(
        self, url: str, model: str, api_key: str = "", timeout_s: float = 120.0, concurrency: int = 8
    ) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.concurrency = max(1, concurrency)

    def complete(self, prompt: str) -> str:
        """The judge's reply to one user message."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0.0,
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        endpoint = f"{self.url}/chat/completions"
        req = urllib.request.Request(endpoint, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                data = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace")
            raise JudgeError(f"judge endpoint {endpoint}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise JudgeError(f"judge endpoint {endpoint} is unreachable ({reason})") from None
        except json.JSONDecodeError:
            raise JudgeError(f"judge endpoint {endpoint}: the reply is not JSON") from None
        try:
            return data["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeError(
                f"judge endpoint {endpoint}: no choices[0].message.content in the reply"
            ) from None

    def check(self) -> None:
        """Fail early, before any generation: the endpoint must answer (GET /models); a refused key (401/403)
        is an error, other HTTP answers are not (some compatible servers lack /models)."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        endpoint = f"{self.url}/models"
        try:
            with urllib.request.urlopen(
                urllib.request.Request(endpoint, headers=headers), timeout=self.timeout_s
            ):
                return
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise JudgeError(f"judge endpoint {endpoint}: HTTP {e.code} (check the API key)") from None
        except (urllib.error.URLError, OSError) as e:
            raise JudgeError(
                f"judge endpoint {endpoint} is unreachable ({getattr(e, 'reason', e)})"
            ) from None

    def verdicts(self, prompts: Sequence[str]) -> list[str]:
        """The raw replies to `prompts`, in order."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self.complete, prompts))


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise JudgeError(
                f"judge server {url} exited with {proc.returncode}: {' | '.join(tail)} (log: {log})"
            )
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=5):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(1.0)
    raise JudgeError(f"judge server {url} not ready after {timeout_s:.0f} s (log: {log})")


@contextmanager
def local_judge_server(
    model_path: str,
    log: Path,
    served_name: str = "judge",
    max_model_len: int = 2048,
    start_timeout_s: float = 600,
) -> Iterator[str]:
    """vLLM's OpenAI server on `model_path` at a free loopback port, for the `with` block; yields its /v1 URL.
    CPU boxes need VLLM_CPU_KVCACHE_SPACE (DESIGN.md section 2): 1 GiB unless the caller's env sets it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_path,
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        str(max_model_len),
        "--gpu-memory-utilization",
        "0.5",
        "--enforce-eager",
    ]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_ready(url, proc, log, start_timeout_s)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

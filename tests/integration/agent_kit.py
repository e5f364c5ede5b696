"""`searchrl serve agent` as a real process for the agent tests (integration and the e2e page test)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from searchrl.config import Config, dump_config
from searchrl.redisio import free_port
from tests.conftest import ROOT


def start_agent(
    cfg: Config, workdir: Path, name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> tuple[subprocess.Popen, str]:
    """Start the server on a free port and wait until /health answers; returns (process, base URL)."""
    port = free_port()
    path = workdir / f"{name}.yaml"
    path.write_text(dump_config(cfg))
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "searchrl.cli",
                "serve",
                "agent",
                "-c",
                str(path),
                "--port",
                str(port),
                *args,
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_agent(proc)
            raise RuntimeError(f"the agent server did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)


def stop_agent(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def sse_events(lines) -> list[tuple[str, str]]:  # noqa: ANN001 - an iterator of text lines
    """(event name, data) of each Server-Sent Event in `lines`."""
    events, name, data = [], "message", ""
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
        elif not line and data:
            events.append((name, data))
            name, data = "message", ""
    return events

"""Fixtures of the chaos suite (`make test-chaos`): `chaos_run` starts a fresh run (own run dir, own Redis with a
password, own gRPC token, the tiny config with 8 steps) and kills every process in teardown; the session's
results table is rewritten after every test to $CHAOS_REPORT (default `<pytest basetemp>/chaos-report.md`) and
printed at the end."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.accounting import StreamTap
from tests.chaos.harness import Cluster, RedisServer
from tests.chaos.scenario import Run, markdown
from tests.conftest import tiny_config_at

MAX_STEPS = 8
SAVE_EVERY = 2  # a trainer killed after an odd step dies between checkpoints
CLAIM_IDLE_MS = 4000  # a SIGSTOPped worker's tasks are reclaimed after 4 s

_ROWS: list[dict[str, str]] = []
_REPORT: list[Path] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # noqa: ANN001, ANN201 - pytest hook
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _crash_message(item: pytest.Item) -> str | None:
    """The exception line of the test's call phase, when it failed."""
    rep = getattr(item, "rep_call", None)
    crash = getattr(getattr(rep, "longrepr", None), "reprcrash", None)
    return crash.message if crash is not None else None


@pytest.fixture(scope="session")
def chaos_report(tmp_path_factory) -> Path:
    path = Path(os.environ.get("CHAOS_REPORT") or tmp_path_factory.getbasetemp() / "chaos-report.md")
    _REPORT.append(path)
    return path


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory) -> Path:
    """One FAISS index for the whole session (the tiny corpus never changes between runs)."""
    return tmp_path_factory.mktemp("index")


@pytest.fixture()
def chaos_run(request, tmp_path, index_dir, chaos_report, monkeypatch) -> Iterator[Run]:
    token = secrets.token_hex(16)
    monkeypatch.setenv("SEARCHRL_TOKEN", token)  # the harness's own gRPC calls (searchrl.grpcutil.channel)
    cfg = tiny_config_at(tmp_path / "run")
    cfg.trainer.max_steps, cfg.trainer.save_every = MAX_STEPS, SAVE_EVERY
    cfg.streams.claim_idle_ms = CLAIM_IDLE_MS
    # One task per batch: both workers work on every step, so a stopped worker holds half of it while the
    # other's group waits in the trainer (the slow-worker case of review finding 1).
    cfg.rollout.tasks_per_batch = 1
    cfg.retriever.index_dir = str(index_dir)
    redis_server = RedisServer(tmp_path / "redis", secrets.token_hex(12))
    redis_server.start()
    cluster = Cluster(cfg, redis_server, token)
    tap = StreamTap(redis_server.url, cfg.streams.prompts, cfg.streams.trajectories)
    tap.start()
    run = Run(request.node.name.removeprefix("test_"), cluster, tap)
    failure = "failed"
    try:
        cluster.start_all()
        yield run
    except Exception as e:
        failure = f"start-up: {type(e).__name__}: {e}"
        raise
    finally:
        if run.row is None:  # failed before finish(): still account for what happened
            cluster.close()
            failure = _crash_message(request.node) or failure
            try:
                acc, report, problems = run.verdict()
            except Exception as e:  # noqa: BLE001 - the row must still be written
                acc, report, problems = None, {}, [f"accounting failed: {e}"]
            run.record(acc, report, [f"FAIL: {failure.splitlines()[0]}", *problems])
        tap.stop()
        cluster.close()
        redis_server.stop()
        _ROWS.append(run.row)
        chaos_report.parent.mkdir(parents=True, exist_ok=True)
        chaos_report.write_text(markdown(_ROWS))


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest hook
    if _ROWS:
        terminalreporter.write_sep("=", f"chaos report ({_REPORT[0]})")
        terminalreporter.write(markdown(_ROWS))

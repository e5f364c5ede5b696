"""`searchrl up -c configs/tiny*.yaml --steps 2`: the whole system as separate processes, end to end, once per
search protocol (tiny.yaml: r1searcher, tiny-research.yaml, tiny-search-r1.yaml).

Afterwards the run's persisted Redis (AOF in <run_dir>/redis) is reopened to inspect both streams."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from transformers import AutoTokenizer

from searchrl.config import load_config
from searchrl.models import resolve_model
from searchrl.protocol import get_protocol
from searchrl.records import Trajectory
from searchrl.redisio import connect, free_port, redis_server_binary
from tests.conftest import ROOT

STEPS = 2


@pytest.fixture(
    scope="module",
    # the other two protocols run in `make test-slow` (CI runs it after `make test`)
    params=[
        "tiny.yaml",
        pytest.param("tiny-research.yaml", marks=pytest.mark.slow),
        pytest.param("tiny-search-r1.yaml", marks=pytest.mark.slow),
    ],
)
def run(request, tmp_path_factory):
    config = f"configs/{request.param}"
    run_dir = tmp_path_factory.mktemp("up") / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "searchrl.cli",
            "up",
            "-c",
            config,
            "--steps",
            str(STEPS),
            "--run-dir",
            str(run_dir),
            "--set",
            "streams.keep_acked=true",  # keep the trajectories for the inspection below
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if proc.returncode != 0:
        logs = "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in (run_dir / "logs").glob("*.log"))
        pytest.fail(f"up failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{logs}")
    port = free_port()
    redis = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(run_dir / "redis"),
            "--appendonly",
            "yes",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
    )
    r = connect(f"redis://127.0.0.1:{port}/0")
    for _ in range(100):
        try:
            r.ping()
            break
        except Exception:  # noqa: BLE001
            import time

            time.sleep(0.1)
    yield run_dir, proc.stdout, r, load_config(config)
    redis.terminate()
    redis.wait()


def test_metrics_have_one_line_per_step_with_timings(run):
    run_dir, stdout, _, _ = run
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert [m["policy_version"] for m in lines] == [1, 2]
    for m in lines:
        for key in (
            "reward_mean",
            "num_searches_mean",
            "response_len_mean",
            "staleness_mean",
            "generate_s",
            "retrieve_s",
            "reward_s",
            "train_s",
            "weight_sync_s",
        ):
            assert key in m and np.isfinite(m[key]), key
        assert m["staleness_mean"] == 0.0  # max_staleness 0: on-policy
        assert m["generate_s"] > 0 and m["train_s"] > 0
    assert "step    1" in stdout and "done: policy v2" in stdout


def test_rollout_workers_serve_the_trainers_final_weights(run):
    summary = json.loads((run[0] / "summary.json").read_text())
    t = summary["trainer"]
    assert t["step"] == STEPS and t["version"] == STEPS
    assert t["trained_trajectories"] == STEPS * 2 * 4
    for w in summary["rollout"]:
        assert w["version"] == t["version"] and w["weights_sha256"] == t["weights_sha256"] != ""
    final = run[0] / "hf" / "final"  # the trained policy as a plain HF folder
    assert (final / "config.json").is_file() and (final / "model.safetensors").is_file()
    assert (run[0] / "checkpoints" / "latest").read_text().strip() == f"step_{STEPS}"


def test_streams_flowed_nothing_is_pending_and_the_audit_passes(run):
    run_dir, _, r, _ = run
    for stream, group in (("prompts", "rollout"), ("trajectories", "trainer")):
        assert r.xlen(stream) > 0
        info = {g["name"].decode(): g for g in r.xinfo_groups(stream)}
        assert info[group]["pending"] == 0, f"{stream}/{group} has pending entries"
    audit = subprocess.run(
        [sys.executable, "-m", "searchrl.cli", "audit", "--run-dir", str(run_dir), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    rep = json.loads(audit.stdout)
    assert rep["trained"] == STEPS * 2 and rep["committed_step"] == rep["checkpoint_step"] == STEPS
    assert rep["trained_twice"] == [] and rep["unaccounted"] == []


def _masked_spans(mask: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, m in enumerate([*mask, 1]):
        if m == 0 and start is None:
            start = i
        elif m == 1 and start is not None:
            spans.append((start, i))
            start = None
    return spans


def test_loss_mask_covers_exactly_the_inserted_text(run):
    """Every masked span decodes to text the worker inserted (a documents block, or Search-R1's corrective
    message) and nothing the model wrote; each documents block follows the model's own query-closing tag."""
    _, _, r, cfg = run
    protocol = get_protocol(cfg.rollout.protocol)
    max_obs = cfg.rollout.budgets().max_obs_tokens
    tok = AutoTokenizer.from_pretrained(resolve_model(cfg.model.path))
    trajs = [Trajectory.decode(f) for _, f in r.xrange("trajectories")]
    assert trajs
    searched = 0
    for t in trajs:
        mask = t.loss_mask.tolist()
        documents = 0
        for a, b in _masked_spans(mask):
            text = tok.decode(t.response_ids[a:b].tolist())
            cut = (b == len(mask) and t.finish_reason == "length") or b - a == max_obs
            if protocol.invalid_action and text.startswith(protocol.invalid_action):
                assert set(text.split(protocol.invalid_action)) == {""}, text  # one or more, back to back
                continue
            if protocol.invalid_action and cut and protocol.invalid_action.startswith(text):
                continue
            documents += 1
            assert text.startswith(protocol.after_query + protocol.docs_open), text
            if not cut:
                assert text.endswith(protocol.docs_close + protocol.after_docs), text
            assert tok.decode(t.response_ids[:a].tolist()).endswith(protocol.query_close)
        assert documents == t.metrics["num_searches"], t.traj_id
        assert np.all(t.logprobs[t.loss_mask == 0] == 0)
        assert np.all(t.logprobs[t.loss_mask == 1] <= 0)
        searched += documents
    assert searched > 0, "no rollout searched: the tiny model should emit queries"

"""Every reward preset through the real `Reward.Score` gRPC server and the `searchrl reward score` CLI, the R1-Searcher
switches (`reward.r1s_*`) from the config, and the seeds' own examples in tests/fixtures/rewards/*.jsonl."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import get_args

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from searchrl.config import ConfigError, RewardPreset, load_config
from searchrl.grpcutil import channel
from searchrl.proto import reward_pb2, reward_pb2_grpc
from searchrl.redisio import free_port
from searchrl_reward.rules import PRESETS, RuleOptions, score
from searchrl_reward.scorer import RewardScorer, ScoreInput

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rewards"
FIELDS = ["reward", "em", "cem", "f1", "format_ok", "num_searches"]
FALSE_ITEM = ScoreInput("q", "x</think><answer>FALSE</answer>", ["False"])
LONG_ANSWER = ScoreInput(
    "q", "x</think><answer>one two three four five six seven eight nine ten eleven</answer>", ["eleven"]
)
RESEARCH = (
    "<think> x </think> <search> q </search> <result>\nd\n</result> <think> y </think> "
    "<answer> \\boxed{Paris} </answer><|im_end|>"
)
SEARCH_R1 = "<think> x </think>\n<answer> Paris </answer>"


def _fixture_rows() -> list[dict]:
    rows = []
    for path in sorted(FIXTURES.glob("*.jsonl")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                rows.append({**json.loads(line), "_where": f"{path.name}:{n}"})
    return rows


@pytest.mark.parametrize("row", _fixture_rows(), ids=lambda r: r["_where"])
def test_seed_examples(row: dict) -> None:
    opts = RuleOptions(**row.get("options", {}))
    r = score(row["preset"], row.get("question", ""), row["response"], row["golden_answers"], opts)
    assert r.reward == pytest.approx(row["reward"]), row["source"]
    assert r.format_ok is row["format_ok"], row["source"]


def test_fixtures_cover_every_preset() -> None:
    assert {row["preset"] for row in _fixture_rows()} == set(PRESETS)
    assert all(row["source"] for row in _fixture_rows())


def test_config_switches_reach_the_scorer() -> None:
    default = RewardScorer.from_config(load_config(None).reward)
    # seed bool mapping: "FALSE" stays "false" != "no": -1 + 0.5 (format) = -0.5
    assert default.score("r1s-stage1", [FALSE_ITEM])[0].reward == -0.5
    # Llama stage-2 code: no answer-length check, F1 1/6
    assert default.score("r1s-stage2", [LONG_ANSWER])[0].reward == pytest.approx(1 / 6)
    cfg = load_config(
        None,
        [
            "reward.r1s_bool_mapping=normalized",
            "reward.r1s_stage2_checks=qwen",
            "reward.r1s_format_penalty=-2",
        ],
    )
    switched = RewardScorer.from_config(cfg.reward)
    assert switched.score("r1s-stage1", [FALSE_ITEM])[0].reward == 1.5
    # Qwen code: 11 words is a fault, 1/6 - 2
    assert switched.score("r1s-stage2", [LONG_ANSWER])[0].reward == pytest.approx(1 / 6 - 2)


def test_bad_switch_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"reward\.r1s_bool_mapping"):
        load_config(None, ["reward.r1s_bool_mapping=loose"])
    with pytest.raises(ConfigError, match=r"reward\.r1s_stage2_checks"):
        load_config(None, ["reward.r1s_stage2_checks=mistral"])


def test_every_preset_is_a_stage_reward_preset() -> None:
    for preset in PRESETS:
        cfg = load_config(None, [f"trainer.stages=[{{reward_preset: {preset}}}]"])
        assert cfg.trainer.stages[0].reward_preset == preset
    assert set(get_args(RewardPreset)) == set(PRESETS)


@pytest.fixture(scope="module")
def reward_addr():
    from searchrl_reward.server import serve

    cfg = load_config(None, ["reward.r1s_bool_mapping=normalized"])
    cfg.reward.port, cfg.reward.metrics_port, cfg.reward.health_port = free_port(), free_port(), free_port()
    server = serve(cfg)
    yield cfg
    server.stop(0)


def test_new_presets_over_grpc(reward_addr) -> None:
    stub = reward_pb2_grpc.RewardStub(channel(f"127.0.0.1:{reward_addr.reward.port}", reward_addr.security))

    def one(preset: str, response: str, golds: list[str]) -> reward_pb2.ItemScore:
        item = reward_pb2.ScoreItem(question="capital of France?", response=response, golden_answers=golds)
        return stub.Score(reward_pb2.ScoreRequest(preset=preset, items=[item]), timeout=30).scores[0]

    r = one("research", RESEARCH, ["Paris"])
    assert (r.reward, r.format_ok, r.em, r.num_searches) == (1.0, True, 1.0, 1)
    assert one("research", RESEARCH, ["Lyon"]).reward == pytest.approx(0.1)
    assert one("search-r1-em", SEARCH_R1, ["Paris"]).reward == 1.0
    assert one("search-r1-format", SEARCH_R1, ["Lyon"]).reward == pytest.approx(0.2)
    # the server's config switch: normalized bool mapping credits "FALSE" for "False": 1 + 0.5
    assert one("r1s-stage1", FALSE_ITEM.response, ["False"]).reward == 1.5
    with pytest.raises(grpc.RpcError) as e:
        one("search-r1", SEARCH_R1, ["Paris"])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "preset" in e.value.details()


def test_cli_scores_every_preset_with_the_same_fields(tmp_path) -> None:
    line = json.dumps({"question": "capital of France?", "response": SEARCH_R1, "golden_answers": ["Paris"]})
    for preset, expected in (("search-r1-em", 1.0), ("search-r1-format", 1.0), ("research", 0.0)):
        out = subprocess.run(
            [sys.executable, "-m", "searchrl.cli", "reward", "score", "--preset", preset],
            input=line + "\n",
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        row = json.loads(out.stdout)
        assert list(row) == FIELDS and row["reward"] == expected


def test_cli_takes_the_switches_from_a_config(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("reward:\n  r1s_bool_mapping: normalized\n")
    line = json.dumps({"question": "q", "response": FALSE_ITEM.response, "golden_answers": ["False"]})
    rewards = []
    for extra in ([], ["-c", str(cfg)], ["--set", "reward.r1s_bool_mapping=normalized"]):
        out = subprocess.run(
            [sys.executable, "-m", "searchrl.cli", "reward", "score", "--preset", "r1s-stage1", *extra],
            input=line + "\n",
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        rewards.append(json.loads(out.stdout)["reward"])
    assert rewards == [-0.5, 1.5, 1.5]


@pytest.mark.parametrize(
    ("protocol", "presets", "eos"),
    [
        ("r1searcher", ["r1s-stage2"], ""),
        ("research", ["research"], "<|im_end|>"),  # the model stops on EOS; the worker keeps special tokens
        ("search-r1", ["search-r1-em", "search-r1-format"], ""),  # each turn is cut at </answer>
    ],
)
def test_each_protocols_worked_response_gets_full_marks(protocol: str, presets: list[str], eos: str) -> None:
    # The rollout's own formatting (searchrl.protocol) and the reward rules agree: tags, inserted documents and
    # the answer format of a well-formed response score the maximum with one search counted.
    from searchrl.protocol import Document, get_protocol

    resp = get_protocol(protocol).worked_response(
        "capital of France", [Document("Paris", "The capital.")], "Paris"
    )
    for preset in presets:
        r = score(preset, "What is the capital of France?", resp + eos, ["Paris"])
        assert (r.reward, r.format_ok, r.em, r.num_searches) == (1.0, True, 1.0, 1), preset


_PIECES = (
    "<think> </think> <answer> </answer> <search> </search> <result> </result> <information> </information>"
)
_PIECES += " \\boxed{ { } $ <|im_end|> a <|begin_of_query|> <|end_of_query|> True yes"
# whole tags, braces, EOS and the assistant marker, joined by spaces, newlines or nothing
_TAGGY = st.lists(
    st.sampled_from([*_PIECES.split(), " ", "\n", "\\boxed ", "<|im_start|>assistant\n"]), max_size=40
).map("".join)


@given(
    st.sampled_from(sorted(PRESETS)), st.text(max_size=20), _TAGGY, st.lists(_TAGGY, min_size=1, max_size=3)
)
def test_every_preset_scores_any_text(preset: str, question: str, response: str, golds: list[str]) -> None:
    # No input makes a rule raise (the seeds raise and catch in places), and every metric stays in range.
    r = score(preset, question, response, golds)
    assert (
        -3.0 <= r.reward <= 2.0 and all(0.0 <= m <= 1.0 for m in (r.em, r.cem, r.f1)) and r.num_searches >= 0
    )

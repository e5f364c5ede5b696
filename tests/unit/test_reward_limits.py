"""Reward cost bounds (review finding 7): the rules are linear in the text size, and `RewardScorer` caps gold
count, gold length and question length with INVALID_ARGUMENT naming the field, also over real gRPC."""

from __future__ import annotations

import grpc
import pytest

from searchrl.config import RewardConfig, load_config
from searchrl.grpcutil import InvalidArgument, channel
from searchrl.proto import reward_pb2, reward_pb2_grpc
from searchrl.redisio import free_port
from searchrl_reward.rules import DOCS_CLOSE, DOCS_OPEN, PRESETS, stage2_format_faults
from searchrl_reward.scorer import RewardScorer, ScoreInput

N_TOKENS = 20_000


# A response in each preset's own format around the answer, so every preset grades the answer.
_FORMATS = {
    "r1s-stage1": "</think>\n<answer> {} </answer>",
    "r1s-stage2": "</think>\n<answer> {} </answer>",
    "research": "<think> x </think> <answer> \\boxed{{{}}} </answer><|im_end|>",
    "search-r1-em": "<think> x </think>\n<answer> {} </answer>",
    "search-r1-format": "<think> x </think>\n<answer> {} </answer>",
}


def _long_item(preset: str) -> ScoreInput:
    # Worst case for a list scan: every gold token is in the prediction, at its far end.
    pred = " ".join(f"w{i}" for i in range(N_TOKENS))
    gold = " ".join([f"w{N_TOKENS - 1}"] * N_TOKENS)
    return ScoreInput("q", _FORMATS[preset].format(pred), [gold])


# The quadratic rules took seconds per call here (the review measured 2 s at 8k x 8k tokens); the linear ones
# take milliseconds. The timeout only stops a regression from hanging the suite.
@pytest.mark.timeout(3)
def test_long_prediction_and_gold_score_in_linear_time() -> None:
    assert set(_FORMATS) == set(PRESETS)
    for preset in PRESETS:
        item = _long_item(preset)
        scorer = RewardScorer(max_golden_answer_chars=len(item.golden_answers[0]))
        (result,) = scorer.score(preset, [item])
        assert result.cem == 1.0 and 0.0 < result.f1 < 1.0


@pytest.mark.timeout(3)
def test_unclosed_tags_scan_in_linear_time_in_every_preset() -> None:
    # A regex like <answer>(.*?)</answer> rescans to the end from every unclosed tag: quadratic (minutes at the
    # 200k-char limit). Every preset must stay linear on a response made of opening tags.
    limit = RewardConfig().max_response_chars
    scorer = RewardScorer()
    for tag in ("<answer>", "<search>", "<think>", "\\boxed{", "<|begin_of_query|>"):
        item = ScoreInput("q", tag * (limit // len(tag)), ["a"])
        for preset in PRESETS:
            scorer.score(preset, [item])


@pytest.mark.timeout(3)
def test_unclosed_document_tags_scan_in_linear_time() -> None:
    # A response made of unclosed <|begin_of_documents|> tags made the documents regex rescan to the end
    # from every tag: quadratic in the response length (7 s at the 200k-char response limit).
    resp = DOCS_OPEN * (RewardConfig().max_response_chars // len(DOCS_OPEN)) + "答"
    assert "cjk_outside_documents" in stage2_format_faults(resp)
    assert stage2_format_faults(f"{DOCS_OPEN}答{DOCS_CLOSE}\n\n{DOCS_OPEN}答") == [
        "retrieval_tag_counts",
        "think_answer_tag_counts",
        "cjk_outside_documents",
    ]


def _item(question: str = "q", golds: list[str] | None = None) -> ScoreInput:
    return ScoreInput(question, "</think>\n<answer> a </answer>", golds or ["a"])


def test_limits_name_the_field() -> None:
    scorer = RewardScorer(max_golden_answers=3, max_golden_answer_chars=5, max_question_chars=10)
    ok = _item()
    cases = [
        (_item(golds=["a", "b", "c", "d"]), r"items\[3\]\.golden_answers: 4 answers exceed the limit of 3"),
        (_item(golds=["a", "123456"]), r"items\[3\]\.golden_answers\[1\]: has 6 chars, limit 5"),
        (_item(question="x" * 11), r"items\[3\]\.question: has 11 chars, limit 10"),
    ]
    for bad, message in cases:
        with pytest.raises(InvalidArgument, match=message):
            scorer.score("r1s-stage1", [ok, ok, ok, bad])
    # At the limits the item is scored.
    (result,) = scorer.score("r1s-stage1", [_item("x" * 10, ["a", "b", "12345"])])
    assert result.cem == 1.0


def test_scorer_takes_its_limits_from_the_config() -> None:
    cfg = load_config(
        None,
        [
            "reward.max_golden_answers=2",
            "reward.max_golden_answer_chars=7",
            "reward.max_question_chars=9",
        ],
    )
    scorer = RewardScorer.from_config(cfg.reward)
    assert (scorer.max_golden_answers, scorer.max_golden_answer_chars, scorer.max_question_chars) == (2, 7, 9)
    assert (scorer.max_batch, scorer.max_response_chars) == (
        cfg.reward.max_batch,
        cfg.reward.max_response_chars,
    )


@pytest.fixture(scope="module")
def reward_cfg():
    from searchrl_reward.server import serve

    cfg = load_config(None)
    cfg.reward.port, cfg.reward.metrics_port, cfg.reward.health_port = free_port(), free_port(), free_port()
    server = serve(cfg)
    yield cfg
    server.stop(0)


def test_oversized_gold_is_invalid_argument_over_grpc(reward_cfg) -> None:
    limit = reward_cfg.reward.max_golden_answer_chars
    stub = reward_pb2_grpc.RewardStub(channel(f"127.0.0.1:{reward_cfg.reward.port}", reward_cfg.security))
    items = [
        reward_pb2.ScoreItem(question="q", response="r", golden_answers=["a"]),
        reward_pb2.ScoreItem(question="q", response="r", golden_answers=["a", "x" * (limit + 1)]),
    ]
    with pytest.raises(grpc.RpcError) as e:
        stub.Score(reward_pb2.ScoreRequest(preset="r1s-stage1", items=items), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"items[1].golden_answers[1]: has {limit + 1} chars, limit {limit}" in e.value.details()

"""Hand-worked cases for searchrl_reward.rules (R1-Searcher reward rules).

Every expected value is worked out by hand from the rules in the module docstring / R1-Searcher's reward
servers; the arithmetic is in the comments. Responses are response text only (the prompt ends with <think>).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from searchrl_reward.rules import (
    PRESETS,
    RuleOptions,
    ScoreResult,
    count_searches,
    cover_exact_match,
    exact_match,
    extract_answer,
    f1_score,
    normalize_answer,
    score,
    score_batch,
    stage2_format_faults,
)

# One search, documents inserted exactly as the rollout worker does, one </think>, one answer.
SEARCH_BLOCK = (
    "<|begin_of_query|> capital of France <|end_of_query|>\n\n"
    "<|begin_of_documents|>\n(1)Paris is the capital of France.\n(2)France is in Europe.\n<|end_of_documents|>\n\n"
)
GOOD_SEARCH = "I should look this up. " + SEARCH_BLOCK + "So it is Paris.</think>\n<answer>Paris</answer>"
GOOD_NO_SEARCH = "I know this.</think>\n<answer>Paris</answer>"
QWEN = RuleOptions(r1s_stage2_checks="qwen")


# --- normalize_answer ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # "_" -> " ", lower, "!" -> " ", drop "the", collapse: "the  eiffel tower " -> "eiffel tower"
        ("The  Eiffel_Tower!", "eiffel tower"),
        # articles only as whole words: "an apple a day" -> "apple day"; "theatre" untouched
        ("an apple a day", "apple day"),
        ("Theatre", "theatre"),
        # "U.S.A." -> "u s a " -> the lone "a" is an article -> "u s"
        ("U.S.A.", "u s"),
        # typographic quote ’ and accents ` ´ are punctuation too
        ("O’Neil", "o neil"),
        ("rock `n´ roll", "rock n roll"),
        # the seed maps only the raw strings "True" / "False"
        ("True", "yes"),
        ("False", "no"),
        ("false.", "false"),
        ("TRUE", "true"),
        ("True story", "true story"),
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # "normalized": a whole normalised answer "true" / "false", any case or punctuation
        ("True", "yes"),
        ("false.", "no"),
        ("TRUE", "yes"),
        # only a whole answer is mapped
        ("True story", "true story"),
    ],
)
def test_normalize_answer_normalized_bool_mapping(raw: str, expected: str) -> None:
    assert normalize_answer(raw, "normalized") == expected


def test_bool_mapping_seed_versus_normalized() -> None:
    # The case: answer "FALSE", gold "False". Seed: "FALSE" is not the raw string "False", so it stays
    # "false" while the gold maps to "no": EM 0, stage-1 reward -1 + 0.5 (format) = -0.5. Normalized: 1 + 0.5.
    resp = "x</think><answer>FALSE</answer>"
    assert exact_match("FALSE", ["False"]) == 0.0
    assert exact_match("FALSE", ["False"], "normalized") == 1.0
    assert score("r1s-stage1", "q", resp, ["False"]).reward == -0.5
    assert score("r1s-stage1", "q", resp, ["False"], RuleOptions(r1s_bool_mapping="normalized")).reward == 1.5


@given(st.text(max_size=12), st.sampled_from(["True", "False", "true", "no", "yes", "FALSE", "x"]))
def test_normalized_mapping_credits_everything_the_seed_credits(pred: str, gold: str) -> None:
    # The seed maps raw "True"/"False" before normalising; "normalized" maps the normalised string, which
    # covers the seed's cases, so it never scores an answer lower.
    for metric in (exact_match, cover_exact_match, f1_score):
        assert metric(pred, [gold], "seed") <= metric(pred, [gold], "normalized")


# --- extract_answer --------------------------------------------------------------------------------------------


def test_extract_answer_last_tag_wins() -> None:
    assert extract_answer("x <answer>Lyon</answer> y <answer> Paris </answer> z") == "Paris"


def test_extract_answer_missing_tags() -> None:
    assert extract_answer("no tags at all") is None
    assert extract_answer("<answer>Paris") is None
    assert extract_answer("Paris</answer>") is None


def test_extract_answer_empty_and_unclosed_last() -> None:
    assert extract_answer("<answer></answer>") == ""
    # both tags present, but the last <answer> is never closed: the seed takes the rest of the text
    assert extract_answer("<answer>a</answer><answer> b ") == "b"


# --- exact_match / cover_exact_match / f1_score ----------------------------------------------------------------


def test_yes_no_true_false() -> None:
    # "True" -> "yes" on either side
    assert exact_match("yes", ["True"]) == 1.0
    assert exact_match("True", ["yes"]) == 1.0
    assert exact_match("False", ["no"]) == 1.0
    assert exact_match("True", ["no"]) == 0.0
    # F1: "no" vs "no" -> identical single token -> 1
    assert f1_score("No.", ["False"]) == 1.0
    # the seed maps only the raw strings: "true" stays "true"
    assert exact_match("true", ["yes"]) == 0.0


def test_exact_match_articles_punctuation_underscores() -> None:
    assert exact_match("The Paris.", ["paris"]) == 1.0  # "paris" == "paris"
    assert exact_match("new_york", ["New York"]) == 1.0  # "new york" == "new york"
    assert exact_match("Paris, France", ["Paris"]) == 0.0  # "paris france" != "paris"


def test_exact_match_max_over_golds() -> None:
    assert exact_match("NYC", ["New York City", "nyc"]) == 1.0


def test_cem_versus_em() -> None:
    # gold tokens [paris] all in [paris, france] -> CEM 1, EM 0
    assert exact_match("Paris, France", ["Paris"]) == 0.0
    assert cover_exact_match("Paris, France", ["Paris"]) == 1.0
    # order ignored: [paris, france] covered by [france, paris]
    assert cover_exact_match("France Paris", ["Paris France"]) == 1.0
    # "city" missing from [new, york] -> 0
    assert cover_exact_match("New York", ["New York City"]) == 0.0
    # max over golds: second gold [new, york] covered
    assert cover_exact_match("New York", ["New York City", "New York"]) == 1.0
    # "True" gold -> [yes]; prediction "yes" -> [yes]
    assert cover_exact_match("yes", ["True"]) == 1.0


def test_f1_partial_overlap() -> None:
    # pred [eiffel, tower, in, paris] vs gold [eiffel, tower]: common 2, P = 2/4, R = 2/2,
    # F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    assert f1_score("the Eiffel Tower in Paris", ["Eiffel Tower"]) == pytest.approx(2 / 3)
    # repeated tokens are a multiset: [paris, paris] vs [paris]: common 1, P = 1/2, R = 1 -> 2/3
    assert f1_score("paris paris", ["paris"]) == pytest.approx(2 / 3)
    # no overlap -> 0
    assert f1_score("Lyon", ["Paris"]) == 0.0
    # max over golds: vs "tower" P = 1/2, R = 1 -> 2/3; vs "eiffel tower" -> 1
    assert f1_score("eiffel tower", ["tower", "eiffel tower"]) == 1.0


def test_f1_yes_no_noanswer_rule() -> None:
    # gold "yes" is special and differs from "yes indeed" -> 0 (plain F1 would be 2/3)
    assert f1_score("yes indeed", ["yes"]) == 0.0
    # prediction "yes" is special and differs from "yes sir" -> 0 (plain F1 would be 2/3)
    assert f1_score("yes", ["yes sir"]) == 0.0
    assert f1_score("noanswer", ["Paris"]) == 0.0


def test_metrics_none_prediction_and_empty_golds() -> None:
    assert exact_match(None, ["Paris"]) == 0.0
    assert cover_exact_match(None, ["Paris"]) == 0.0
    assert f1_score(None, ["Paris"]) == 0.0
    with pytest.raises(ValueError):
        f1_score("Paris", [])


# --- count_searches --------------------------------------------------------------------------------------------


def test_count_searches() -> None:
    assert count_searches(GOOD_SEARCH) == 1
    assert count_searches(GOOD_NO_SEARCH) == 0
    assert count_searches(SEARCH_BLOCK + SEARCH_BLOCK + "</think><answer>Paris</answer>") == 2
    # empty query (ends the rollout, no retrieval), quotes-only query, unclosed query: none count
    assert count_searches("<|begin_of_query|>  <|end_of_query|>") == 0
    assert count_searches('<|begin_of_query|> "" <|end_of_query|>') == 0
    assert count_searches("<|begin_of_query|> capital of France") == 0


# --- stage 1 ---------------------------------------------------------------------------------------------------


def test_stage1_correct_with_search() -> None:
    # CEM 1 -> +1; seven retrieval counts all 1 (>= 1) -> +0.5; think/answer counts right -> +0.5; total 2.0
    r = score("r1s-stage1", "capital of France?", GOOD_SEARCH, ["Paris"])
    assert r == ScoreResult(reward=2.0, em=1.0, cem=1.0, f1=1.0, format_ok=True, num_searches=1)


def test_stage1_correct_without_search() -> None:
    # +1 (CEM) + 0 (retrieval counts all 0, not >= 1) + 0.5 (format) = 1.5
    r = score("r1s-stage1", "q", GOOD_NO_SEARCH, ["Paris"])
    assert r.reward == 1.5
    assert r.num_searches == 0
    assert r.format_ok is True


def test_stage1_wrong_answer_with_search() -> None:
    # -1 (CEM 0) + 0.5 + 0.5 = 0.0
    r = score("r1s-stage1", "q", GOOD_SEARCH, ["Lyon"])
    assert r.reward == 0.0
    assert (r.em, r.cem, r.f1) == (0.0, 0.0, 0.0)


def test_stage1_cem_credit_where_em_fails() -> None:
    # answer "Paris, France" covers gold "Paris": +1 + 0 + 0.5 = 1.5; EM 0, CEM 1,
    # F1: [paris, france] vs [paris] -> P = 1/2, R = 1 -> 2/3
    r = score("r1s-stage1", "q", "ok</think><answer>Paris, France</answer>", ["Paris"])
    assert r.reward == 1.5
    assert (r.em, r.cem) == (0.0, 1.0)
    assert r.f1 == pytest.approx(2 / 3)


def test_stage1_missing_answer_tags() -> None:
    # with search: -1 (no tags) + 0.5 (retrieval ok) + 0 (answer counts 0) = -0.5
    r = score("r1s-stage1", "q", "look " + SEARCH_BLOCK + "It is Paris.</think> Paris", ["Paris"])
    assert r.reward == -0.5
    assert (r.em, r.cem, r.f1, r.format_ok) == (0.0, 0.0, 0.0, False)
    # without search: -1 + 0 + 0 = -1
    assert score("r1s-stage1", "q", "I think it is Paris", ["Paris"]).reward == -1.0


def test_stage1_think_tag_in_response_loses_format_bonus() -> None:
    # the prompt already opened <think>; another one in the response: +1 + 0 + 0 = 1.0
    r = score("r1s-stage1", "q", "<think>x</think><answer>Paris</answer>", ["Paris"])
    assert r.reward == 1.0
    assert r.format_ok is False


def test_stage1_multiple_answer_tags_last_wins() -> None:
    # last answer "Paris" -> +1; no search -> 0; two <answer> -> no format bonus; total 1.0
    r = score("r1s-stage1", "q", "x</think><answer>Lyon</answer><answer>Paris</answer>", ["Paris"])
    assert r.reward == 1.0
    # reversed: last answer "Lyon" -> -1 + 0 + 0 = -1.0
    r = score("r1s-stage1", "q", "x</think><answer>Paris</answer><answer>Lyon</answer>", ["Paris"])
    assert r.reward == -1.0


def test_stage1_query_without_documents_gets_no_retrieval_bonus() -> None:
    # query counts 1, document counts 0 -> unequal -> no +0.5; +1 + 0.5 (format) = 1.5
    r = score(
        "r1s-stage1", "q", "<|begin_of_query|> x <|end_of_query|></think><answer>Paris</answer>", ["Paris"]
    )
    assert r.reward == 1.5
    assert r.num_searches == 1


def test_stage1_empty_retrieval_gets_no_retrieval_bonus() -> None:
    # the seed inserts "None" when nothing was retrieved: "<|begin_of_documents|>\n(1)" count 0 vs 1 for the
    # others -> no +0.5; +1 + 0.5 = 1.5
    resp = (
        "<|begin_of_query|> x <|end_of_query|>\n\n<|begin_of_documents|>\nNone<|end_of_documents|>\n\n"
        "</think><answer>Paris</answer>"
    )
    assert score("r1s-stage1", "q", resp, ["Paris"]).reward == 1.5


def test_stage1_true_gold_yes_prediction() -> None:
    # gold "True" -> "yes" covers prediction "yes": +1 + 0 + 0.5 = 1.5
    assert score("r1s-stage1", "q", "x</think><answer>yes</answer>", ["True"]).reward == 1.5


# --- stage 2 ---------------------------------------------------------------------------------------------------


def test_stage2_well_formed() -> None:
    # F1 1, no fault -> 1.0 (with and without search: zero searches is a valid format in stage 2)
    r = score("r1s-stage2", "q", GOOD_SEARCH, ["Paris"])
    assert r == ScoreResult(reward=1.0, em=1.0, cem=1.0, f1=1.0, format_ok=True, num_searches=1)
    assert score("r1s-stage2", "q", GOOD_NO_SEARCH, ["Paris"]).reward == 1.0


def test_stage2_partial_f1() -> None:
    # [paris, france] vs [paris]: P = 1/2, R = 1 -> F1 = 2/3, no fault -> 2/3
    r = score("r1s-stage2", "q", "x</think><answer>Paris France</answer>", ["Paris"])
    assert r.reward == pytest.approx(2 / 3)
    assert r.format_ok is True


def test_stage2_unequal_query_tags() -> None:
    # begin_of_query 1, end_of_query 0 -> fault; F1 1 + (-1) = 0.0
    resp = "<|begin_of_query|> x </think><answer>Paris</answer>"
    assert stage2_format_faults(resp) == ["retrieval_tag_counts"]
    r = score("r1s-stage2", "q", resp, ["Paris"])
    assert r.reward == 0.0
    assert r.format_ok is False


def test_stage2_unequal_document_tags() -> None:
    # documents opened but never closed: end_of_documents counts 0 vs 1 -> fault; 1 - 1 = 0.0
    resp = GOOD_SEARCH.replace("<|end_of_documents|>\n\n", "")
    assert stage2_format_faults(resp) == ["retrieval_tag_counts"]
    assert score("r1s-stage2", "q", resp, ["Paris"]).reward == 0.0


def test_stage2_think_tag_faults() -> None:
    # a <think> in the response -> fault; 1 - 1 = 0.0
    resp = "<think>x</think><answer>Paris</answer>"
    assert stage2_format_faults(resp) == ["think_answer_tag_counts"]
    assert score("r1s-stage2", "q", resp, ["Paris"]).reward == 0.0
    # no </think> at all -> fault; 1 - 1 = 0.0
    assert score("r1s-stage2", "q", "<answer>Paris</answer>", ["Paris"]).reward == 0.0


def test_stage2_missing_answer_tags() -> None:
    # no answer tags: F1 0, answer counts 0 -> fault; 0 - 1 = -1.0
    r = score("r1s-stage2", "q", "It is Paris.</think> Paris", ["Paris"])
    assert r.reward == -1.0
    assert r.f1 == 0.0


def test_stage2_duplicate_answer_tags() -> None:
    # last answer "Paris" -> F1 1; two <answer> -> fault; 1 - 1 = 0.0
    resp = "x</think><answer>Paris</answer><answer>Paris</answer>"
    assert stage2_format_faults(resp) == ["think_answer_tag_counts"]
    assert score("r1s-stage2", "q", resp, ["Paris"]).reward == 0.0


def test_stage2_tags_inside_answer() -> None:
    # the whole search block sits inside <answer>: all seven retrieval counts are 1, think/answer counts right,
    # 7 raw words (<= 10), so the only fault is tags_in_answer.
    # prediction normalises to 16 tokens: begin of query x end of query begin of documents 1 d end of
    # documents paris; common with [paris] = 1: P = 1/16, R = 1, F1 = 2*(1/16)/(17/16) = 2/17;
    # reward = 2/17 - 1 = -15/17
    resp = (
        "x</think><answer><|begin_of_query|> x <|end_of_query|>\n\n<|begin_of_documents|>\n(1)d\n"
        "<|end_of_documents|>\n\n Paris</answer>"
    )
    assert stage2_format_faults(resp, "qwen") == ["tags_in_answer"]
    r = score("r1s-stage2", "q", resp, ["Paris"], QWEN)
    assert r.f1 == pytest.approx(2 / 17)
    assert r.reward == pytest.approx(-15 / 17)
    # the Llama code (the default) has no such check: F1 2/17, no fault
    assert stage2_format_faults(resp) == []
    assert score("r1s-stage2", "q", resp, ["Paris"]).reward == pytest.approx(2 / 17)


def test_stage2_qwen_tag_check_is_the_seeds_two_substrings() -> None:
    # reward_server_qwen_zero.py l.233-237 looks for "begin_of_query" / "begin_of_documents" only
    # (the bare words leave all seven tag counts at 0, so the counts are equal)
    assert stage2_format_faults("x</think><answer>a begin_of_query b</answer>", "qwen") == ["tags_in_answer"]
    assert stage2_format_faults("x</think><answer>a end_of_documents b</answer>", "qwen") == []


def test_stage2_answer_longer_than_ten_words() -> None:
    # 11 words, gold "eleven": common 1, P = 1/11, R = 1, F1 = 2*(1/11)/(12/11) = 1/6; fault -> 1/6 - 1 = -5/6
    words = "one two three four five six seven eight nine ten eleven"
    resp = f"x</think><answer>{words}</answer>"
    assert stage2_format_faults(resp, "qwen") == ["answer_too_long"]
    assert score("r1s-stage2", "q", resp, ["eleven"], QWEN).reward == pytest.approx(-5 / 6)
    # exactly 10 words, gold "ten": P = 1/10, R = 1, F1 = 2*(1/10)/(11/10) = 2/11; no fault -> 2/11
    resp10 = "x</think><answer>one two three four five six seven eight nine ten</answer>"
    assert stage2_format_faults(resp10, "qwen") == []
    assert score("r1s-stage2", "q", resp10, ["ten"], QWEN).reward == pytest.approx(2 / 11)
    # Llama code (default): no length check, F1 1/6 and no fault
    assert stage2_format_faults(resp) == []
    assert score("r1s-stage2", "q", resp, ["eleven"]).reward == pytest.approx(1 / 6)


def test_stage2_cjk_outside_documents() -> None:
    # CJK in the reasoning -> fault; 1 - 1 = 0.0
    resp = "巴黎</think><answer>Paris</answer>"
    assert stage2_format_faults(resp) == ["cjk_outside_documents"]
    assert score("r1s-stage2", "q", resp, ["Paris"]).reward == 0.0
    # CJK inside retrieved documents is fine -> 1.0
    resp_docs = GOOD_SEARCH.replace("(1)Paris is", "(1)巴黎 Paris is")
    assert stage2_format_faults(resp_docs) == []
    assert score("r1s-stage2", "q", resp_docs, ["Paris"]).reward == 1.0


def test_stage2_penalty_is_added_to_f1_and_configurable() -> None:
    # partial F1 2/3 with a think fault: 2/3 - 1 = -1/3 (penalty added, F1 kept)
    resp = "<think>x</think><answer>Paris France</answer>"
    assert score("r1s-stage2", "q", resp, ["Paris"]).reward == pytest.approx(-1 / 3)
    # paper penalty -2: 2/3 - 2 = -4/3
    paper = RuleOptions(r1s_format_penalty=-2.0)
    assert score("r1s-stage2", "q", resp, ["Paris"], paper).reward == pytest.approx(-4 / 3)


# --- errors and batch ------------------------------------------------------------------------------------------


def test_unknown_preset() -> None:
    assert list(PRESETS) == ["r1s-stage1", "r1s-stage2", "research", "search-r1-em", "search-r1-format"]
    with pytest.raises(ValueError, match="preset"):
        score("r1s-stage3", "q", GOOD_SEARCH, ["Paris"])
    with pytest.raises(ValueError, match="preset"):
        score_batch("search-r1", [])
    with pytest.raises(ValueError, match="r1s_bool_mapping"):
        RuleOptions(r1s_bool_mapping="loose")  # type: ignore[arg-type]


def test_empty_golden_answers() -> None:
    with pytest.raises(ValueError, match="golden_answers"):
        score("r1s-stage1", "q", GOOD_SEARCH, [])


def test_score_batch_keeps_order() -> None:
    items = [("q1", GOOD_SEARCH, ["Paris"]), ("q2", GOOD_SEARCH, ["Lyon"]), ("q3", GOOD_NO_SEARCH, ["Paris"])]
    # stage 1: 2.0, 0.0, 1.5 (see the single-item tests above)
    assert [r.reward for r in score_batch("r1s-stage1", items)] == [2.0, 0.0, 1.5]
    # stage 2: F1 1, 0, 1, all well-formed
    assert [r.reward for r in score_batch("r1s-stage2", items)] == [1.0, 0.0, 1.0]
    assert score_batch("r1s-stage2", []) == []

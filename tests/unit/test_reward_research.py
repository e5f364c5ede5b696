"""Hand-worked cases for the `research` preset (ReSearch re_search.py `compute_score` at 3b2fd14).

`response` is the text after `<|im_start|>assistant\\n`, EOS `<|im_end|>` kept. Every expected value is worked
out in the comments from the seed's code.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from searchrl_reward.research_rules import boxed_answer, check_format, normalize_answer, score_research

EOS = "<|im_end|>"
SEARCH = "<search> capital of France </search> <result>\nParis is the capital of France.\n</result>"
GOOD = (
    f"<think> I need the capital. </think> {SEARCH} <think> It is Paris. </think> "
    "<answer> The final answer is \\[ \\boxed{Paris} \\] </answer>" + EOS
)


def _with_answer(inner: str) -> str:
    return f"<think> x </think> <answer> {inner} </answer>{EOS}"


def test_good_response_scores_f1() -> None:
    # format ok, ends with EOS, boxed "Paris" vs gold "Paris": F1 1 -> reward 1
    r = score_research(GOOD, ["Paris"])
    assert (r.reward, r.format_ok, r.em, r.cem, r.f1, r.num_searches) == (1.0, True, 1.0, 1.0, 1.0, 1)


def test_wrong_answer_good_format_gets_point_one() -> None:
    r = score_research(GOOD, ["Lyon"])
    assert (r.reward, r.format_ok, r.f1) == (0.1, True, 0.0)


def test_partial_f1() -> None:
    # [paris, france] vs [paris]: P 1/2, R 1 -> F1 2/3; reward 2/3 (> 0, so no 0.1)
    r = score_research(_with_answer("\\boxed{Paris France}"), ["Paris"])
    assert r.reward == pytest.approx(2 / 3) and r.cem == 1.0 and r.em == 0.0


def test_max_over_golds() -> None:
    assert score_research(GOOD, ["Lyon", "Paris"]).reward == 1.0


def test_missing_eos_is_over_length() -> None:
    # (b): the seed returns 0 "over length" when the response does not end with the EOS string
    for resp in (GOOD[: -len(EOS)], GOOD + "\n", GOOD + "more"):
        r = score_research(resp, ["Paris"])
        assert (r.reward, r.format_ok) == (0.0, False)


@pytest.mark.parametrize(
    "resp",
    [
        # no <think> at all
        f"<answer> \\boxed{{Paris}} </answer>{EOS}",
        # two <think>, one </think>
        f"<think> a <think> b </think> <answer> \\boxed{{Paris}} </answer>{EOS}",
        # two answers
        f"<think> a </think> <answer> \\boxed{{Paris}} </answer> <answer> \\boxed{{Paris}} </answer>{EOS}",
        # </answer> before <answer>
        f"<think> a </think> </answer> \\boxed{{Paris}} <answer>{EOS}",
        # a search that never got a result
        f"<think> a </think> <search> q </search> <answer> \\boxed{{Paris}} </answer>{EOS}",
        # result before the search closes
        f"<think> a </think> <search> q <result> d </result> </search> <answer> \\boxed{{Paris}} </answer>{EOS}",
        # no \\boxed{ in the answer part (the \\boxed{ is outside it)
        f"<think> \\boxed{{Paris}} </think> <answer> Paris </answer>{EOS}",
    ],
)
def test_format_faults_give_zero(resp: str) -> None:
    assert check_format(resp) is False
    r = score_research(resp, ["Paris"])
    assert (r.reward, r.format_ok, r.f1) == (0.0, False, 0.0)


def test_boxed_space_form_wins_and_stops_at_dollar() -> None:
    # "\\boxed " (with a space) anywhere in the answer part: the text after its LAST occurrence up to "$",
    # even though an earlier \\boxed{Lyon} is brace-complete
    assert boxed_answer(" \\boxed{Lyon} or $\\boxed Paris$ maybe ") == "Paris"
    assert score_research(_with_answer("\\boxed{Lyon} or $\\boxed Paris$"), ["Paris"]).reward == 1.0


def test_boxed_brace_matching() -> None:
    # brace-matched from the last \\boxed{: the inner braces are kept
    assert boxed_answer("\\boxed{a} \\boxed{x{y}z} tail") == "x{y}z"
    # unclosed last \\boxed{ -> None (seed: exception -> 0)
    assert boxed_answer("\\boxed{Paris} \\boxed{Lyon") is None
    # last \\boxed not followed by "{" -> None (seed: failed assert -> 0)
    assert boxed_answer("\\boxed{Paris} \\boxedx{Lyon}") is None
    assert boxed_answer("\\boxed{Paris} then \\boxed") is None
    r = score_research(_with_answer("\\boxed{Paris} \\boxed{Lyon"), ["Paris"])
    assert (r.reward, r.format_ok) == (0.0, False)


def test_latex_inside_box_loses_to_punctuation_deletion() -> None:
    # \\text{Paris} -> lower "\\text{paris}" -> punctuation deleted -> "textparis" != "paris": F1 0 -> 0.1
    r = score_research(_with_answer("\\boxed{\\text{Paris}}"), ["Paris"])
    assert (r.reward, r.format_ok) == (0.1, True)


def test_normalisation_deletes_punctuation() -> None:
    # ReSearch deletes punctuation (R1-Searcher replaces it with a space)
    assert normalize_answer("Jean-Paul, the Great!") == "jeanpaul great"
    assert normalize_answer("U.S.A.") == "usa"
    # "jeanpaul" vs [jean, paul]: no common token -> 0.1
    assert score_research(_with_answer("\\boxed{Jean-Paul}"), ["Jean Paul"]).reward == 0.1


def test_yes_no_alias_skipped_when_different() -> None:
    # alias "no" is skipped (pred "yes" is special and differs), alias "yes" matches -> 1
    assert score_research(_with_answer("\\boxed{yes}"), ["no", "yes"]).reward == 1.0
    # "yes indeed" vs special gold "yes": skipped -> F1 0 -> 0.1
    assert score_research(_with_answer("\\boxed{yes indeed}"), ["yes"]).reward == 0.1


def test_assistant_marker_inside_response_cuts_it() -> None:
    # the seed splits "<|im_start|>assistant\\n" + response on the marker and keeps part [1] only, so a response
    # that repeats the marker is graded up to it: here "<think> a </think> " without an answer -> 0
    resp = "<think> a </think> <|im_start|>assistant\n" + GOOD
    assert score_research(resp, ["Paris"]).reward == 0.0


def test_empty_box_is_wrong_not_malformed() -> None:
    # \\boxed{} -> "" -> no tokens -> F1 0 -> 0.1
    assert score_research(_with_answer("\\boxed{}"), ["Paris"]).reward == 0.1


def test_num_searches_counts_inserted_results() -> None:
    two = GOOD.replace(SEARCH, SEARCH + " " + SEARCH)
    assert score_research(two, ["Paris"]).num_searches == 2
    assert score_research(_with_answer("\\boxed{Paris}"), ["Paris"]).num_searches == 0


@given(st.text(max_size=60), st.text(max_size=20))
def test_reward_is_zero_or_point_one_or_positive_f1(middle: str, inner: str) -> None:
    # Invariant: reward > 0 exactly when the format holds, and then it is max(F1, 0.1) with F1 in [0, 1].
    r = score_research(f"<think> {middle} </think> <answer> \\boxed{{{inner}}} </answer>{EOS}", ["Paris"])
    assert 0.0 <= r.reward <= 1.0
    assert (r.reward > 0) == r.format_ok
    if r.format_ok:
        assert r.reward == (r.f1 if r.f1 > 0 else 0.1)


@given(st.text(min_size=1, max_size=30).filter(lambda s: not s.endswith(EOS)))
def test_anything_after_eos_gives_zero(tail: str) -> None:
    assert score_research(GOOD + tail, ["Paris"]).reward == 0.0

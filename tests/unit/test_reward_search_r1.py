"""Hand-worked cases for `search-r1-em` / `search-r1-format` (Search-R1 qa_em.py / qa_em_format.py at a14dc3a).

`response` is the generated text after the chat generation prompt; the rules rebuild the seed's full sequence
(nq_search.py prompt in the Qwen2.5 chat template) in front of it, as the seed's RewardManager decodes it.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from searchrl_reward.search_r1_rules import (
    extract_solution,
    full_sequence,
    is_valid_sequence,
    score_search_r1,
)

GOOD = (
    "<think> I need to search. </think>\n<search> capital of France </search>\n\n"
    "<information>Doc 1(Title: Paris) Paris is the capital of France.</information>\n\n"
    "<think> It is Paris. </think>\n<answer> Paris </answer>"
)
Q = "what is the capital of france?"


def em(resp: str, golds: list[str], q: str = Q):
    return score_search_r1(q, resp, golds, with_format=False)


def fmt(resp: str, golds: list[str], q: str = Q):
    return score_search_r1(q, resp, golds, with_format=True)


def test_full_sequence_is_the_seed_prompt_in_the_qwen_chat_template() -> None:
    seq = full_sequence(Q, "R")
    assert seq.startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nAnswer the given question. You must conduct reasoning inside <think> and </think> "
    )
    assert seq.endswith(
        "For example, <answer> Beijing </answer>. Question: what is the capital of france?\n<|im_end|>\n"
        "<|im_start|>assistant\nR"
    )


def test_good_response() -> None:
    # em: "paris" == "paris" -> 1; format: valid and em -> 1.0
    assert (em(GOOD, ["Paris"]).reward, fmt(GOOD, ["Paris"]).reward) == (1.0, 1.0)
    r = fmt(GOOD, ["Paris"])
    assert (r.em, r.cem, r.f1, r.format_ok, r.num_searches) == (1.0, 1.0, 1.0, True, 1)
    # em-only preset reports the same format check
    assert em(GOOD, ["Paris"]).format_ok is True


def test_format_reward_table() -> None:
    # valid, wrong -> 0.2; em 0
    assert (em(GOOD, ["Lyon"]).reward, fmt(GOOD, ["Lyon"]).reward) == (0.0, 0.2)
    # em but invalid (text after </answer>) -> 0.8
    bad = GOOD + " Done."
    assert is_valid_sequence(full_sequence(Q, bad)) is False
    assert (em(bad, ["Paris"]).reward, fmt(bad, ["Paris"]).reward) == (1.0, 0.8)
    # invalid and wrong -> 0.1
    assert (em(bad, ["Lyon"]).reward, fmt(bad, ["Lyon"]).reward) == (0.0, 0.1)


def test_beijing_quirk() -> None:
    # No complete <answer>...</answer> in the response: the seed's regex runs over the prompt too, whose
    # "<answer> and </answer>" and "<answer> Beijing </answer>" are two matches, so the answer is "Beijing".
    for resp in ("<think> no idea </think>", "<think> x </think>\n<answer> Paris", "Paris</answer>"):
        assert extract_solution(full_sequence(Q, resp)) == "Beijing"
        assert em(resp, ["Beijing"]).reward == 1.0
        assert em(resp, ["Paris"]).reward == 0.0
        # invalid format (no final answer): em -> 0.8, not em -> 0.1
        assert fmt(resp, ["Beijing"]).reward == 0.8
        assert fmt(resp, ["Paris"]).reward == 0.1


def test_last_answer_wins() -> None:
    resp = "<think> a </think>\n<answer> Lyon </answer> <answer> Paris </answer>"
    assert em(resp, ["Paris"]).reward == 1.0
    # two answers: the second <answer> comes in state "end" -> invalid -> 0.8
    assert fmt(resp, ["Paris"]).reward == 0.8


def test_one_trailing_eos_removed() -> None:
    for eos in ("<|im_end|>", "<|endoftext|>"):
        assert fmt(GOOD + eos, ["Paris"]).reward == 1.0
    # only one: the second EOS is content after </answer> -> invalid -> 0.8
    assert fmt(GOOD + "<|im_end|><|im_end|>", ["Paris"]).reward == 0.8


@pytest.mark.parametrize(
    "resp",
    [
        # content before the first <think>
        "Sure. " + GOOD,
        # answer straight after the information, without thinking again
        GOOD.replace("<think> It is Paris. </think>\n", ""),
        # answer without any think
        "<answer> Paris </answer>",
        # search inside think
        "<think> a <search> q </search> </think>\n<answer> Paris </answer>",
        # unbalanced information tags
        GOOD.replace("</information>", ""),
        # content between </search> and <information>
        GOOD.replace("</search>\n\n", "</search> oops "),
    ],
)
def test_invalid_sequences(resp: str) -> None:
    assert is_valid_sequence(full_sequence(Q, resp)) is False
    assert fmt(resp, ["Paris"]).reward == 0.8


def test_valid_without_search() -> None:
    resp = "<think> I know it. </think>\n<answer> Paris </answer>"
    assert is_valid_sequence(full_sequence(Q, resp)) is True
    assert fmt(resp, ["Paris"]).num_searches == 0


def test_normalisation_and_aliases() -> None:
    # SQuAD normalisation: lower, punctuation deleted, articles dropped
    assert em("<think>a</think><answer> The U.S.A. </answer>", ["usa"]).reward == 1.0
    assert em("<think>a</think><answer> Paris, France </answer>", ["Lyon", "paris france"]).reward == 1.0
    # em is exact: a longer answer is wrong (cem still credits it)
    r = em("<think>a</think><answer> Paris France </answer>", ["Paris"])
    assert (r.reward, r.em, r.cem) == (0.0, 0.0, 1.0)
    assert r.f1 == pytest.approx(2 / 3)


def test_question_text_is_part_of_the_searched_sequence() -> None:
    # A question containing "<answer>" opens a match that runs into the response up to its first "</answer>",
    # so the graded answer is that whole span, not " Paris " (seed behaviour: the regex sees the prompt).
    resp = "<think> a </think>\n<answer> Paris </answer>"
    assert em(resp, ["Paris"], q="what goes in <answer>?").reward == 0.0


@given(st.text(max_size=80), st.booleans())
def test_format_reward_is_a_function_of_em_and_validity(resp: str, with_format: bool) -> None:
    r = score_search_r1(Q, resp, ["Paris", "Beijing"], with_format=with_format)
    if with_format:
        expected = {(True, True): 1.0, (True, False): 0.8, (False, True): 0.2, (False, False): 0.1}
        assert r.reward == expected[(r.em == 1.0, r.format_ok)]
    else:
        assert r.reward == r.em

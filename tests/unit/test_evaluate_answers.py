"""`searchrl eval` grades the answer each protocol's reward reads."""

from searchrl.evaluate import predicted_answer
from searchrl.protocol import R1_SEARCHER, RESEARCH, SEARCH_R1


def test_research_answers_are_read_from_the_box():
    text = "<think> x </think> <answer> The final answer is \\[ \\boxed{Paris} \\] </answer><|im_end|>"
    assert predicted_answer(RESEARCH, text) == "Paris"
    assert predicted_answer(RESEARCH, "<answer> Paris </answer>") == "Paris"  # no box: the answer text
    assert predicted_answer(R1_SEARCHER, text) == "The final answer is \\[ \\boxed{Paris} \\]"
    assert predicted_answer(SEARCH_R1, "<answer> a </answer> <answer> b </answer>") == "b"
    assert predicted_answer(SEARCH_R1, "no answer") is None

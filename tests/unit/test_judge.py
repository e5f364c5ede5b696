"""The judge's R1-Searcher protocol as pure functions: the prompt, the verdict parse (with the seed's quirks) and
the aggregation into the eval table."""

from searchrl.evaluate import EvalRecord, format_table, summarize
from searchrl.judge import judge_prompt, parse_verdict

SEED_PROMPT = (
    "Given a Question and its Golden Answer, verify whether the Predicted Answer is correct. The prediction is "
    "correct if it fully aligns with the meaning and key information of the Golden Answer. Respond with True if "
    "the prediction is correct and False otherwise.\n\nQuestion: Who?\nGolden Answer: Ann\nPredicted Answer: "
    "Ann B.\n    "
)


def test_prompt_is_the_seeds_template():
    assert judge_prompt("Who?", ["Ann"], "Ann B.") == SEED_PROMPT


def test_prompt_quirks_missing_prediction_and_aliases():
    # the seed formats a missing prediction as Python does: "None"
    assert "Predicted Answer: None\n" in judge_prompt("Q", ["a"], None)
    # one golden string in the seed's files; several aliases are listed
    assert "Golden Answer: a; b\n" in judge_prompt("Q", ["a", "b"], "x")


def test_verdict_is_the_exact_string_true():
    assert parse_verdict("True") is True
    for text in ("False", "true", "True.", " True", "True\n", "Answer: True", "", None):
        assert parse_verdict(text) is False, text


def _rec(judge, cem=0.0):
    return EvalRecord("q", ["a"], "all", "r", "a", cem, cem, cem, 1, cem, judge=judge)


def test_summary_and_table_carry_the_judge_mean():
    s = summarize([_rec(1.0, 1.0), _rec(0.0), _rec(1.0), _rec(0.0)])
    assert s["all"]["judge"] == 0.5
    assert "judge" in format_table({"naive-rag": s})
    unjudged = summarize([_rec(None)])
    assert unjudged["all"]["judge"] is None
    assert "-" in format_table({"naive-rag": unjudged}).splitlines()[1]

import json
import subprocess
import sys

LINES = [
    {"question": "q", "response": "x </think><answer> The Beatles </answer>", "golden_answers": ["beatles"]},
    {"question": "q", "response": "no tags at all", "golden_answers": ["yes"]},
    {"question": "q", "response": "</think><answer>True</answer>", "golden_answers": ["yes"]},
]


def _score(preset: str, lines: list[dict]) -> subprocess.CompletedProcess:
    inp = "".join(json.dumps(x) + "\n" for x in lines)
    return subprocess.run(
        [sys.executable, "-m", "searchrl.cli", "reward", "score", "--preset", preset],
        input=inp,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_scores_in_order_with_all_fields():
    out = _score("r1s-stage1", LINES)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    assert [list(r) for r in rows] == [["reward", "em", "cem", "f1", "format_ok", "num_searches"]] * 3
    # article dropped + case: EM 1; stage 1 = +1 (CEM) + 0.5 (think/answer counts ok), no search bonus
    assert rows[0]["em"] == 1.0 and rows[0]["reward"] == 1.5 and rows[0]["format_ok"] is True
    # missing answer tags: -1, format not ok
    assert rows[1]["reward"] == -1.0 and rows[1]["format_ok"] is False
    # "True" normalises to "yes"
    assert rows[2]["em"] == 1.0


def test_cli_rejects_unknown_preset_and_bad_lines():
    out = _score("r1s-stage9", LINES)
    assert out.returncode == 2 and "preset" in out.stderr
    out = _score("r1s-stage2", [{"question": "q"}])
    assert out.returncode == 2 and "line 1" in out.stderr

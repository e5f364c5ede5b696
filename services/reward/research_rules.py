"""The `research` reward preset: ReSearch's `compute_score` as it ran, quirks included.

Source: ReSearch (github.com/Agent-RL/ReSearch) src/verl/utils/reward_score/re_search.py at 3b2fd14 (line
numbers below refer to it), with the instruct setup of its train.sh: chat template, EOS `<|im_end|>`.

Contract: `response` is the text generated after the chat generation prompt `<|im_start|>assistant\\n`, decoded
with special tokens kept and the inserted ` <result>\\n...\\n</result>` documents left in place. The seed grades
`solution_str.split("<|im_start|>assistant\\n")[1]` (l.161-166); on `"<|im_start|>assistant\\n" + response` that
is `response` up to its own first copy of the marker, if any. The reward is 0 unless

(a) the format holds (`check_format`, l.7-45): at least one `<think>` and as many `<think>` as `</think>`;
    exactly one `<answer>` and one `</answer>`, `<answer>` first; every `<search>` (outside results) is closed
    by `</search>` before the next `<result>`, which is closed by `</result>`; the answer part holds `\\boxed{`
    and `}`;
(b) the response ends exactly with the EOS string (l.171-174, "over length" otherwise);
(c) a boxed answer can be extracted (`boxed_answer`, l.47-95).

Then it is the best F1 over the gold answers (ReSearch normalisation: lower-case, delete ASCII punctuation, drop
a/an/the, split on whitespace; the yes/no/noanswer rule of `common.token_f1`) if that is > 0, else 0.1.
`format_ok` is (a)-(c). EM / CEM / F1 are reported on the boxed answer (0 when (a)-(c) fail). `num_searches`
counts retrievals: each `</search>` the rollout answered with ` <result>` (rollout vllm_rollout.py l.386-420).

Quirks kept: a `\\boxed ` (with a space) anywhere in the answer wins over a complete `\\boxed{...}`; LaTeX inside
the box is not unwrapped (`\\boxed{\\text{Paris}}` normalises to "textparis"); a response that repeats the
assistant marker is graded up to it. Not reproduced: the `\\fbox` fallback (l.72-75), unreachable because (a)
requires `\\boxed{`. This module knows no tokenizer, prompt or protocol object.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from searchrl_reward.common import ScoreResult, answer_metrics

ASSISTANT_MARKER = "<|im_start|>assistant\n"
EOS = "<|im_end|>"
WRONG_ANSWER_REWARD = 0.1
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation as in the seed (l.97-110): lower-case, delete punctuation, drop articles, collapse
    whitespace. (Search-R1's qa_em.py has the same function; `search_r1_rules` reuses this one.)"""
    text = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _searches_well_formed(text: str) -> bool:
    # l.20-36: walk <search> ... </search> ... <result> ... </result> blocks; the next <search> is looked for
    # after the </result>, so tags inside results are skipped.
    pos = 0
    while (search := text.find("<search>", pos)) >= 0:
        result = text.find("<result>", search)
        search_end = text.find("</search>", search)
        result_end = text.find("</result>", result)
        if -1 in (result, search_end, result_end):
            return False
        if not search < search_end < result < result_end:
            return False
        pos = result_end
    return True


def check_format(text: str) -> bool:
    """(a): the seed's `validate_format` on the graded text (EOS still attached)."""
    thinks = text.count("<think>")
    if thinks != text.count("</think>") or thinks == 0:
        return False
    if text.count("<answer>") != 1 or text.count("</answer>") != 1:
        return False
    if not _searches_well_formed(text):
        return False
    start, end = text.find("<answer>"), text.find("</answer>")
    if start > end:
        return False
    answer_part = text[start:end]
    return "\\boxed{" in answer_part and "}" in answer_part


def boxed_answer(answer_part: str) -> str | None:
    """(c): the seed's `remove_boxed(last_boxed_only_string(answer_part))`; None where the seed raises.

    With a `\\boxed ` (space) anywhere: the text after its last occurrence up to the first `$`. Otherwise the
    span from the last `\\boxed` to the `}` that first balances the braces counted from there; None when the
    braces never balance or the last `\\boxed` is not followed by `{`.
    """
    if "\\boxed " in answer_part:
        return answer_part.split("\\boxed ")[-1].split("$")[0]
    idx = answer_part.rfind("\\boxed")
    if idx < 0:
        return None
    depth = 0
    for i in range(idx, len(answer_part)):
        ch = answer_part[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                boxed = answer_part[idx : i + 1]
                return boxed[len("\\boxed{") : -1] if boxed.startswith("\\boxed{") else None
    return None


def _graded_answer(response: str) -> str | None:
    """The boxed answer when (a)-(c) hold, else None."""
    text = (ASSISTANT_MARKER + response).split(ASSISTANT_MARKER)[1]
    if not check_format(text) or not text.endswith(EOS):
        return None
    match = _ANSWER.search(text[: -len(EOS)].strip())
    return boxed_answer(match.group(1)) if match else None


def score_research(response: str, golden_answers: Sequence[str]) -> ScoreResult:
    """Score one response under the `research` preset (see the module docstring)."""
    searches = response.count("</search> <result>")
    pred = _graded_answer(response)
    if pred is None:
        return ScoreResult(0.0, 0.0, 0.0, 0.0, False, searches)
    em, cem, f1 = answer_metrics(normalize_answer(pred), [normalize_answer(g) for g in golden_answers])
    reward = f1 if f1 > 0 else WRONG_ANSWER_REWARD
    return ScoreResult(reward, em, cem, f1, True, searches)

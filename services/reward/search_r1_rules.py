"""The `search-r1-em` and `search-r1-format` reward presets: Search-R1's `compute_score_em` as it ran.

Source: Search-R1 (github.com/PeterGriffinJin/Search-R1) at a14dc3a: verl/utils/reward_score/qa_em.py
(`search-r1-em`), verl/utils/reward_score/qa_em_format.py (`search-r1-format`) with the scores of
scripts/nq_hotpotqa/v0.3/train_*_format.sh (structure_format_score 0.2, final_format_score 0.1,
retrieval_score 0), and the prompt of scripts/data_process/nq_search.py (`make_prefix`, template "base").

Contract: `response` is the text generated after the chat generation prompt, decoded with special tokens kept,
documents (`\\n\\n<information>...</information>\\n\\n`) in place. The seed grades the whole decoded sequence,
prompt included (verl/trainer/main_ppo.py `RewardManager`), so `full_sequence` rebuilds it: the nq_search.py
prompt for `question` in the Qwen2.5 chat template (default system message), then `response` with one trailing
`<|im_end|>` or `<|endoftext|>` removed (the seed's rollout cuts each turn at `</answer>`, so its sequences end
there; generation.py `_postprocess_responses`).

* Answer (`extract_solution`): the last `<answer>(.*?)</answer>` match (DOTALL) over the whole sequence,
  stripped, or None when there are fewer than two matches.
  Seed quirk: the prompt itself holds two matches ("<answer> and </answer>" and "<answer> Beijing </answer>"),
  so a response without a complete answer pair is graded as the answer "Beijing", and a question containing
  "<answer>" opens a match that runs into the response.
* em: 1 when the normalised answer equals a normalised gold (SQuAD normalisation, `research_rules`).
* `search-r1-em`: reward = em.
* `search-r1-format`: `format_ok` = `is_valid_sequence`; reward 1.0 (em, valid), 0.8 (em, not valid),
  0.2 (valid, not em) or 0.1 (neither); without an answer 0.2 when valid, else 0 (unreachable with this prompt).

Both presets report `format_ok` = `is_valid_sequence`, EM / CEM / F1 on the extracted answer (0 without one),
and `num_searches` = searches the rollout answered (`</search>` followed by the `<information>` block).
This module knows no tokenizer or protocol object.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from searchrl_reward.common import ScoreResult, answer_metrics
from searchrl_reward.research_rules import normalize_answer

QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
EOS_STRINGS = ("<|im_end|>", "<|endoftext|>")
VALID_EM, INVALID_EM, VALID_WRONG, INVALID_WRONG = 1.0, 0.8, 0.2, 0.1

# nq_search.py make_prefix(template_type="base"), verbatim.
_PREFIX = (
    "Answer the given question. "
    "You must conduct reasoning inside <think> and </think> first every time you get new information. "
    "After reasoning, if you find you lack some knowledge, you can call a search engine by <search> query "
    "</search> and it will return the top searched results between <information> and </information>. "
    "You can search as many times as your want. "
    "If you find no further external knowledge needed, you can directly provide the answer inside <answer> and "
    "</answer>, without detailed illustrations. For example, <answer> Beijing </answer>. Question: {question}\n"
)
_ASSISTANT = re.compile(r"<\|im_start\|>assistant\s*")
_TAG_SPLIT = re.compile(r"(</?(?:think|search|information|answer)>)")
_TAGS = frozenset(f"<{s}{t}>" for s in ("", "/") for t in ("think", "search", "information", "answer"))
# (state, tag) -> next state: qa_em_format.py is_valid_sequence l.77-101.
_TRANSITIONS = {
    ("start", "<think>"): "in_think",
    ("information", "<think>"): "in_think",
    ("in_think", "</think>"): "after_think",
    ("after_think", "<search>"): "in_search",
    ("in_search", "</search>"): "after_search",
    ("after_search", "<information>"): "in_information",
    ("in_information", "</information>"): "information",
    ("after_think", "<answer>"): "in_answer",
    ("in_answer", "</answer>"): "end",
}
_CONTENT_STATES = frozenset({"in_think", "in_search", "in_information", "in_answer"})


def full_sequence(question: str, response: str) -> str:
    """The text the seed's RewardManager decodes: chat-templated nq_search prompt + response (one EOS off)."""
    for eos in EOS_STRINGS:
        if response.endswith(eos):
            response = response[: -len(eos)]
            break
    user = _PREFIX.format(question=question)
    return (
        f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
        f"<|im_start|>assistant\n{response}"
    )


def _answer_matches(sequence: str) -> list[str]:
    # re.findall(r"<answer>(.*?)</answer>", DOTALL) with str.find: the regex rescans to the end from every
    # unclosed "<answer>" (quadratic); once no "</answer>" follows, no later match can exist either.
    found, pos = [], 0
    while (start := sequence.find("<answer>", pos)) >= 0:
        end = sequence.find("</answer>", start + len("<answer>"))
        if end < 0:
            break
        found.append(sequence[start + len("<answer>") : end])
        pos = end + len("</answer>")
    return found


def extract_solution(sequence: str) -> str | None:
    """The last answer match, stripped; None with fewer than two matches (qa_em.py extract_solution)."""
    matches = _answer_matches(sequence)
    return matches[-1].strip() if len(matches) >= 2 else None


def is_valid_sequence(sequence: str) -> bool:
    """qa_em_format.py `is_valid_sequence`: after the first assistant marker, balanced tags, the order
    think -> (search -> information -> think)* -> answer ending the text, only whitespace outside tags."""
    marker = _ASSISTANT.search(sequence)
    if not marker:
        return False
    content = sequence[marker.end() :]
    for tag in ("think", "search", "information", "answer"):
        if content.count(f"<{tag}>") != content.count(f"</{tag}>"):
            return False
    state = "start"
    for part in _TAG_SPLIT.split(content):
        if not part.strip():
            continue
        if part in _TAGS:
            state = _TRANSITIONS.get((state, part), "")
            if not state:
                return False
        elif state not in _CONTENT_STATES:
            return False
    return state == "end"


def score_search_r1(
    question: str, response: str, golden_answers: Sequence[str], *, with_format: bool
) -> ScoreResult:
    """Score one response: `search-r1-format` when `with_format`, else `search-r1-em` (module docstring)."""
    sequence = full_sequence(question, response)
    valid = is_valid_sequence(sequence)
    answer = extract_solution(sequence)
    searches = response.count("</search>\n\n<information>")
    if answer is None:
        reward = VALID_WRONG if (with_format and valid) else 0.0
        return ScoreResult(reward, 0.0, 0.0, 0.0, valid, searches)
    em, cem, f1 = answer_metrics(normalize_answer(answer), [normalize_answer(g) for g in golden_answers])
    if not with_format:
        reward = em
    elif em:
        reward = VALID_EM if valid else INVALID_EM
    else:
        reward = VALID_WRONG if valid else INVALID_WRONG
    return ScoreResult(reward, em, cem, f1, valid, searches)

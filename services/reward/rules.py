"""Reward rules for the R1-Searcher protocol (answer extraction, EM / CEM / F1, format checks, stage presets)
and the table of every reward preset (`PRESETS`, `score`): the ReSearch and Search-R1 presets live in
`research_rules` / `search_r1_rules`.

Contract
--------
* Pure functions, no I/O, no model or tokenizer: the caller passes text, gets numbers back.
* ``response`` is the model's response text only, documents inserted by the rollout worker included, *without*
  the prompt. The R1-Searcher prompt ends with ``<think>`` and the model continues from there, so a well-formed
  response contains no ``<think>`` of its own and exactly one ``</think>``. The seed's reward servers count tags
  on exactly this text (they cut the decoded sequence at the prompt's ``...<think>``;
  R1-Searcher train/reward_server_llama_stage1.py ``get_qa``, l.123-125), so this module counts tags on
  ``response`` as given and never prepends the prompt's ``<think>``.
* ``golden_answers`` is a non-empty list of aliases; every metric is the maximum over the aliases (the seed
  scores a single answer string; with one alias the two agree).
* ``score`` returns a :class:`ScoreResult`. For the R1-Searcher presets ``em``, ``cem`` and ``f1`` are reported
  whatever the reward (0 when the answer tags are missing); ``format_ok`` is the preset's own format condition
  (see :func:`score`); ``num_searches`` counts completed non-empty queries.

What this module does not know: tokenizers, EOS handling, the prompt template, which dataset an item came from,
gRPC. The other seeds' rules are in their own modules; only their entries in `PRESETS` are here.

Source of the rules: R1-Searcher (github.com/RUCAIBox/R1-Searcher), files
``train/reward_server_llama_stage1.py`` (stage 1 as run for Llama), ``train/reward_server_llama_stage2.py``
(stage 2 as run for Llama) and ``train/reward_server_qwen_zero.py`` (stricter stage-2 format checks, penalty -2
as in the paper). Line numbers below refer to those files at commit 631167c.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from searchrl.protocol import R1_SEARCHER
from searchrl_reward.common import ScoreResult, token_f1
from searchrl_reward.research_rules import score_research
from searchrl_reward.search_r1_rules import score_search_r1

# --- Protocol tags (R1-Searcher) -------------------------------------------------------------------------------

# One source of truth for the tags: the protocol object the rollout worker formats with.
THINK_OPEN = R1_SEARCHER.think_open
THINK_CLOSE = R1_SEARCHER.think_close
ANSWER_OPEN = R1_SEARCHER.answer_open
ANSWER_CLOSE = R1_SEARCHER.answer_close
QUERY_OPEN = R1_SEARCHER.query_open
QUERY_CLOSE = R1_SEARCHER.query_close
DOCS_OPEN = R1_SEARCHER.docs_open
DOCS_CLOSE = R1_SEARCHER.docs_close

# The rollout inserts documents as "<|end_of_query|>\n\n<|begin_of_documents|>\n(1)doc\n(2)doc\n...
# <|end_of_documents|>\n\n" (R1-Searcher OpenRLHF-RAG/openrlhf/trainer/ppo_utils/experience_maker.py l.1207).
# The reward servers check that these seven counts are all equal, which also catches a retrieval that returned
# nothing (the seed then inserts "None" instead of "(1)...") and documents the model wrote itself
# (R1-Searcher reward_server_llama_stage1.py l.176-183, reward_server_llama_stage2.py l.198-205).
_RETRIEVAL_COUNT_PATTERNS: tuple[str, ...] = (
    DOCS_OPEN + "\n",
    DOCS_CLOSE + "\n\n",
    QUERY_OPEN,
    QUERY_CLOSE,
    DOCS_OPEN,
    DOCS_CLOSE,
    DOCS_OPEN + "\n(1)",
)

# Answers longer than this many whitespace-separated words are a stage-2 format fault
# (R1-Searcher reward_server_qwen_zero.py l.239-241).
MAX_ANSWER_WORDS = 10

# string.punctuation plus typographic quotes/accents (R1-Searcher reward_server_llama_stage1.py l.29).
_PUNCTUATION = frozenset(string.punctuation + "‘’´`")
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
# R1-Searcher bool_mapping (reward_server_llama_stage1.py l.41-47): only these raw strings are mapped.
_SEED_BOOLS = {"True": "yes", "False": "no"}
_NORMALIZED_BOOLS = {"true": "yes", "false": "no"}
BoolMapping = Literal["seed", "normalized"]
Stage2Checks = Literal["llama", "qwen"]


# --- Answer normalisation and metrics --------------------------------------------------------------------------


def normalize_answer(s: str, bool_mapping: BoolMapping = "seed") -> str:
    """Normalise an answer string the R1-Searcher way, with its "True"/"False" -> "yes"/"no" mapping.

    Steps (R1-Searcher reward_server_llama_stage1.py l.21-38): ``_`` -> space, lowercase, punctuation
    (``string.punctuation`` plus ‘ ’ ´ `) -> space, drop the words a/an/the, collapse whitespace.

    ``bool_mapping="seed"`` (default) maps the *raw* strings "True"/"False" before normalising, as the seed's
    ``bool_mapping`` (l.41-47) does for prediction and gold alike: "TRUE" or "True." stay "true".
    ``"normalized"`` maps a whole *normalised* "true"/"false" instead, which covers every case the seed covers
    plus the case and punctuation variants ("true story" stays "true story").
    """
    if bool_mapping == "seed":
        s = _SEED_BOOLS.get(s, s)
    text = s.replace("_", " ").lower()
    text = "".join(" " if ch in _PUNCTUATION else ch for ch in text)
    text = _ARTICLES_RE.sub(" ", text)
    text = " ".join(text.split())
    return _NORMALIZED_BOOLS.get(text, text) if bool_mapping == "normalized" else text


def extract_answer(response: str) -> str | None:
    """Return the stripped text after the last ``<answer>`` up to the next ``</answer>``; None without both tags.

    Mirrors R1-Searcher ``extract_answer_math`` (reward_server_llama_stage1.py l.81-82) together with its
    missing-tag test (l.164): None when either tag is absent anywhere in the response. If the last ``<answer>``
    has no ``</answer>`` after it (while one appears earlier), the seed takes everything after the last
    ``<answer>``; so does this function. Such a response is a format fault in both stages anyway.
    """
    if ANSWER_OPEN not in response or ANSWER_CLOSE not in response:
        return None
    return response.split(ANSWER_OPEN)[-1].split(ANSWER_CLOSE)[0].strip()


def _check_golds(golds: Sequence[str]) -> None:
    if isinstance(golds, str):
        raise TypeError("golds must be a sequence of strings, not a single string")
    if len(golds) == 0:
        raise ValueError("golds must contain at least one golden answer")


def exact_match(pred: str | None, golds: Sequence[str], bool_mapping: BoolMapping = "seed") -> float:
    """1.0 when the normalised prediction equals some normalised gold, else 0.0 (0.0 for ``pred=None``).

    R1-Searcher ``exact_match_score`` (reward_server_llama_stage1.py l.57-60), maximised over aliases.
    """
    _check_golds(golds)
    if pred is None:
        return 0.0
    p = normalize_answer(pred, bool_mapping)
    return 1.0 if any(p == normalize_answer(g, bool_mapping) for g in golds) else 0.0


def cover_exact_match(pred: str | None, golds: Sequence[str], bool_mapping: BoolMapping = "seed") -> float:
    """Cover EM: 1.0 when every token of some normalised gold is among the normalised prediction's tokens.

    Order and contiguity are ignored (R1-Searcher ``cover_exact_match_score_1``, reward_server_llama_stage1.py
    l.49-55). Tokens come from ``str.split(" ")`` as in the seed, so an empty normalised gold ([""]) is covered
    only by an empty normalised prediction. The seed scans a list per gold token, quadratic in the sizes; a
    set makes it linear.
    """
    _check_golds(golds)
    if pred is None:
        return 0.0
    pred_tokens = set(normalize_answer(pred, bool_mapping).split(" "))
    for gold in golds:
        if all(tok in pred_tokens for tok in normalize_answer(gold, bool_mapping).split(" ")):
            return 1.0
    return 0.0


def f1_score(pred: str | None, golds: Sequence[str], bool_mapping: BoolMapping = "seed") -> float:
    """Token F1 between normalised prediction and gold, maximised over golds (0.0 for ``pred=None``).

    0.0 when either side normalises to yes/no/noanswer and the two differ (R1-Searcher f1_score,
    reward_server_llama_stage2.py l.62-88; `common.token_f1`).
    """
    _check_golds(golds)
    if pred is None:
        return 0.0
    p = normalize_answer(pred, bool_mapping)
    counts = Counter(p.split())
    return max(token_f1(p, counts, normalize_answer(g, bool_mapping)) for g in golds)


# --- Tag accounting --------------------------------------------------------------------------------------------


def count_searches(response: str) -> int:
    """Number of completed, non-empty queries: ``<|begin_of_query|> q <|end_of_query|>`` with q non-blank.

    Follows how the seed's rollout decides to retrieve (R1-Searcher experience_maker.py l.1142-1147): the query
    is the text after the last ``<|begin_of_query|>`` before a ``<|end_of_query|>``, with double quotes removed
    and whitespace collapsed; an empty query triggers no retrieval and is not counted.
    """
    count = 0
    for segment in response.split(QUERY_CLOSE)[:-1]:
        if QUERY_OPEN not in segment:
            continue
        query = " ".join(segment.split(QUERY_OPEN)[-1].replace('"', "").split())
        if query:
            count += 1
    return count


def _retrieval_counts_equal(response: str) -> bool:
    counts = {response.count(p) for p in _RETRIEVAL_COUNT_PATTERNS}
    return len(counts) == 1


def _think_answer_counts_ok(response: str) -> bool:
    # The prompt supplies the opening <think>, so the response must contain none, and exactly one </think>,
    # <answer> and </answer> (R1-Searcher reward_server_llama_stage1.py l.192-198, stage2 l.211-219).
    # "</think>" does not contain "<think>" as a substring, so plain str.count is exact.
    return (
        response.count(THINK_OPEN) == 0
        and response.count(THINK_CLOSE) == 1
        and response.count(ANSWER_OPEN) == 1
        and response.count(ANSWER_CLOSE) == 1
    )


def _outside_documents(response: str) -> str:
    # The response without each <|begin_of_documents|>...<|end_of_documents|> span (nearest closing tag; an
    # unclosed opening tag stays). The seed's re.sub with ".*?" does the same but rescans to the end from every
    # unclosed opening tag, quadratic in the response length; str.find resumes where the last span ended.
    parts, pos = [], 0
    while (start := response.find(DOCS_OPEN, pos)) >= 0:
        end = response.find(DOCS_CLOSE, start + len(DOCS_OPEN))
        if end < 0:
            break
        parts.append(response[pos:start])
        pos = end + len(DOCS_CLOSE)
    parts.append(response[pos:])
    return "".join(parts)


def _has_cjk_outside_documents(response: str) -> bool:
    # CJK unified ideographs U+4E00..U+9FFF anywhere except inside retrieved documents
    # (R1-Searcher reward_server_llama_stage2.py l.221-224).
    return any("\u4e00" <= ch <= "\u9fff" for ch in _outside_documents(response))


# Substrings that must not occur inside the answer under the Qwen checks (R1-Searcher
# reward_server_qwen_zero.py l.233-237, the seed's two, as it ran).
_TAGS_FORBIDDEN_IN_ANSWER: tuple[str, ...] = ("begin_of_query", "begin_of_documents")


def stage2_format_faults(response: str, checks: Stage2Checks = "llama") -> list[str]:
    """Names of the stage-2 format faults in ``response``; an empty list means the format is correct.

    R1-Searcher has two stage-2 reward servers. ``checks="llama"`` (default) is
    ``train/reward_server_llama_stage2.py``, the one run for the instruct model (chat template, penalty -1),
    which is this project's default model and ``r1s-stage2`` setup: ``retrieval_tag_counts`` (the seven
    query/document tag counts differ, zero searches allowed; l.198-208), ``think_answer_tag_counts`` (a
    ``<think>``, or not exactly one ``</think>``, ``<answer>``, ``</answer>``: covers missing and duplicate
    answer tags; l.211-219) and ``cjk_outside_documents`` (l.221-224).
    ``checks="qwen"`` adds the two checks only ``train/reward_server_qwen_zero.py`` (Qwen-2.5-7B-Base, penalty
    -2 in the paper) has: ``tags_in_answer`` ("begin_of_query" or "begin_of_documents" in the answer text,
    l.233-237) and ``answer_too_long`` (more than 10 whitespace-separated words, l.239-241). As in the seed,
    the answer text is the split after the last ``<answer>`` even when the tags are missing. Its check for the
    word "Assistant" (l.212-217) is a template-leak check of the base-model prompt and is not included.
    """
    faults: list[str] = []
    if not _retrieval_counts_equal(response):
        faults.append("retrieval_tag_counts")
    if not _think_answer_counts_ok(response):
        faults.append("think_answer_tag_counts")
    if checks == "qwen":
        answer = response.split(ANSWER_OPEN)[-1].split(ANSWER_CLOSE)[0].strip()
        if any(tag in answer for tag in _TAGS_FORBIDDEN_IN_ANSWER):
            faults.append("tags_in_answer")
        if len(answer.split()) > MAX_ANSWER_WORDS:
            faults.append("answer_too_long")
    if _has_cjk_outside_documents(response):
        faults.append("cjk_outside_documents")
    return faults


# --- Presets ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleOptions:
    """Switches of the R1-Searcher presets (``reward.*`` in the config); the other presets have none.

    ``r1s_bool_mapping``: see :func:`normalize_answer`. ``r1s_stage2_checks``: see
    :func:`stage2_format_faults`. ``r1s_format_penalty``: added to the F1 of a faulty ``r1s-stage2`` response
    (-1 Llama code, -2 paper / Qwen code).
    """

    r1s_bool_mapping: BoolMapping = "seed"
    r1s_stage2_checks: Stage2Checks = "llama"
    r1s_format_penalty: float = -1.0

    def __post_init__(self) -> None:
        if self.r1s_bool_mapping not in ("seed", "normalized"):
            raise ValueError(f"r1s_bool_mapping: {self.r1s_bool_mapping!r} is not 'seed' or 'normalized'")
        if self.r1s_stage2_checks not in ("llama", "qwen"):
            raise ValueError(f"r1s_stage2_checks: {self.r1s_stage2_checks!r} is not 'llama' or 'qwen'")


def _score_r1s(stage: int, response: str, golds: Sequence[str], opts: RuleOptions) -> ScoreResult:
    """``r1s-stage1`` / ``r1s-stage2``; see :func:`score`."""
    pred = extract_answer(response)
    em = exact_match(pred, golds, opts.r1s_bool_mapping)
    cem = cover_exact_match(pred, golds, opts.r1s_bool_mapping)
    f1 = f1_score(pred, golds, opts.r1s_bool_mapping)
    if stage == 1:
        reward = 1.0 if (pred is not None and cem == 1.0) else -1.0
        if _retrieval_counts_equal(response) and response.count(QUERY_OPEN) >= 1:
            reward += 0.5
        format_ok = _think_answer_counts_ok(response)
        if format_ok:
            reward += 0.5
    else:
        format_ok = not stage2_format_faults(response, opts.r1s_stage2_checks)
        reward = f1 if format_ok else f1 + opts.r1s_format_penalty
    return ScoreResult(reward, em, cem, f1, format_ok, count_searches(response))


Preset = Callable[[str, str, Sequence[str], RuleOptions], ScoreResult]

# Every reward preset: name -> rule(question, response, golden_answers, options).
PRESETS: dict[str, Preset] = {
    "r1s-stage1": lambda q, r, g, o: _score_r1s(1, r, g, o),
    "r1s-stage2": lambda q, r, g, o: _score_r1s(2, r, g, o),
    "research": lambda q, r, g, o: score_research(r, g),
    "search-r1-em": lambda q, r, g, o: score_search_r1(q, r, g, with_format=False),
    "search-r1-format": lambda q, r, g, o: score_search_r1(q, r, g, with_format=True),
}


def score(
    preset: str,
    question: str,
    response: str,
    golden_answers: Sequence[str],
    options: RuleOptions = RuleOptions(),
) -> ScoreResult:
    """Score one response under ``preset`` (a key of ``PRESETS``).

    ``r1s-stage1`` (R1-Searcher reward_server_llama_stage1.py l.156-200), reward in {-1, -0.5, 0, 0.5, 1,
    1.5, 2}:
      * answer part: -1 when ``<answer>`` or ``</answer>`` is missing, else +1 if CEM else -1;
      * +0.5 when the seven query/document tag counts are all equal and >= 1 (it searched, well-formed);
      * +0.5 when the think/answer tag counts are right (no ``<think>``, one ``</think>``/``<answer>``/
        ``</answer>``). ``format_ok`` is this last condition.

    ``r1s-stage2`` (R1-Searcher reward_server_llama_stage2.py l.183-227): reward = F1 (0 when the answer tags
    are missing) plus ``options.r1s_format_penalty`` when :func:`stage2_format_faults` finds any fault. The
    seed *adds* the penalty to the F1 (``scores[i] = scores[i]-1``, l.226-227) rather than replacing it, so a
    faulty response scores F1 - 1 in [-1, 0]. ``format_ok`` is "no fault". R1-Searcher uses ``question`` only
    to look up the gold answer.

    ``research``: :mod:`research_rules`. ``search-r1-em`` / ``search-r1-format``: :mod:`search_r1_rules`
    (they rebuild the seed's prompt from ``question``).
    Raises ValueError naming ``preset`` for an unknown preset and ``golden_answers`` when it is empty.
    """
    rule = PRESETS.get(preset)
    if rule is None:
        raise ValueError(f"unknown preset {preset!r}; expected one of {list(PRESETS)}")
    if isinstance(golden_answers, str) or len(golden_answers) == 0:
        raise ValueError("golden_answers must be a non-empty list of strings")
    return rule(question, response, golden_answers, options)


def score_batch(
    preset: str,
    items: Sequence[tuple[str, str, list[str]]],
    options: RuleOptions = RuleOptions(),
) -> list[ScoreResult]:
    """Score ``(question, response, golden_answers)`` items in order; see :func:`score` for the rules."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {list(PRESETS)}")
    return [score(preset, question, response, golds, options) for question, response, golds in items]

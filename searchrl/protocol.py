"""Search protocols: the tags, prompt templates, document formatting, turn rules and budgets of one seed, in one
object. Three presets: `r1searcher` (R1-Searcher), `research` (ReSearch), `search-r1` (Search-R1).

The rollout loop and the reward rules read everything protocol-specific from a `Protocol`, so a seed is a
`Protocol` value, not a branch in the loop. Two kinds of turn rules exist (`actions`):
- "query" (R1-Searcher, ReSearch): generation stops at the query-closing tag, the query is searched and the
  documents inserted; a segment that ends any other way ends the rollout;
- "turn" (Search-R1): every segment is an action, the first `<search>q</search>` or `<answer>a</answer>` in it; a
  segment with neither gets the fixed corrective message; after `max_turns` turns one more generation runs with
  search disabled.
This module does no I/O and knows nothing about tokenizers beyond the chat-message list it returns.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal
from typing import Protocol as TypingProtocol


class Example(TypingProtocol):
    """A worked example (config `rollout.examples`): the question and the response after the response prefix."""

    question: str
    response: str


@dataclass(frozen=True)
class Document:
    """One retrieved passage as the protocols format it."""

    title: str
    text: str

    @property
    def contents(self) -> str:
        """The passage as the ReSearch and Search-R1 wiki corpora store it: '"Title"\\ntext' (text alone when
        untitled); both seeds format documents from this string."""
        return f'"{self.title}"\n{self.text}' if self.title else self.text


@dataclass(frozen=True)
class Budgets:
    """A protocol's default budgets (config `rollout.*` fields left unset take these)."""

    top_k: int
    max_searches: int | None  # retrievals per rollout; None = no limit
    segment_tokens: int  # new tokens per generation segment
    max_response_tokens: int  # the whole response, inserted text included
    top_p: float
    max_turns: int | None = None  # "turn" protocols: turns with search, then one final turn without
    max_obs_tokens: int | None = None  # an inserted observation is cut to this many tokens


@dataclass(frozen=True)
class Protocol:
    name: str
    instructions: str  # instruct models: the system message (or the head of the user message)
    base_instructions: str  # base models: the head of the prompt
    think_open: str
    think_close: str
    answer_open: str
    answer_close: str
    query_open: str
    query_close: str
    docs_open: str
    docs_close: str
    # Text the worker inserts after the model's query-closing tag and before the documents.
    after_query: str
    # Text after the documents, before the model continues.
    after_docs: str
    # The documents' text between docs_open and docs_close.
    docs_body: Callable[[Sequence[Document]], str]
    # Generation stops at any of these so the worker can act.
    stops: tuple[str, ...]
    # Appended after the chat template's generation prompt (R1-Searcher: the model starts inside `<think>`).
    response_prefix: str
    # One question turn of the base template; `{question}` is replaced.
    base_turn: str
    # Between the instructions and the first turn of the base template.
    base_sep: str
    # Instruct models: instructions as a system message (else the user message is the base template's turn).
    system_message: bool
    actions: Literal["query", "turn"]
    defaults: Budgets
    empty_query_ends: bool = False  # R1-Searcher: an empty query ends the rollout
    unquote_query: bool = False  # R1-Searcher: double quotes out of the query, whitespace collapsed
    invalid_action: str = ""  # "turn" protocols: inserted after a segment with no action
    answer_format: str = "{answer}"  # how the seed's prompt shows an answer inside the answer tags

    @property
    def stop(self) -> list[str]:
        """Generation stops here so the worker can search (or, Search-R1, end at an answer)."""
        return list(self.stops)

    def _turn(self, question: str) -> str:
        return self.base_turn.replace("{question}", question)

    def _user(self, head: str, question: str) -> str:
        return question if self.system_message else f"{head}{self.base_sep}{self._turn(question)}"

    def messages(
        self, question: str, system_prompt: str = "", examples: Sequence[Example] = ()
    ) -> list[dict[str, str]]:
        """Instruct model: the instructions as system message and the question as user message (R1-Searcher,
        ReSearch), or one user message holding both (Search-R1); worked examples go before the question as
        earlier user/assistant turns. `system_prompt` replaces the instructions."""
        head = system_prompt or self.instructions
        msgs = [{"role": "system", "content": head}] if self.system_message else []
        for ex in examples:
            msgs.append({"role": "user", "content": self._user(head, ex.question)})
            msgs.append({"role": "assistant", "content": self.response_prefix + ex.response})
        msgs.append({"role": "user", "content": self._user(head, question)})
        return msgs

    def base_prompt(self, question: str, system_prompt: str = "", examples: Sequence[Example] = ()) -> str:
        """Base model: the instructions, then the question turn (R1-Searcher `User:{q}\\nAssistant: <think>`,
        ReSearch `User: {q}. Assistant:`, Search-R1 `Question: {q}\\n`), after any worked examples in the
        same shape."""
        shots = "".join(f"{self._turn(ex.question)}{ex.response}\n\n" for ex in examples)
        head = system_prompt or self.base_instructions
        return f"{head}{self.base_sep}{shots}{self._turn(question)}"

    def extract_query(self, segment: str) -> str | None:
        """ "query" protocols: the query of a segment that ended with the query-closing tag (between the last
        opening and the last closing tag); None when there is none. An empty string is an empty query."""
        end = segment.rfind(self.query_close)
        if end < 0:
            return None
        start = segment.rfind(self.query_open, 0, end)
        if start < 0:
            return None
        query = segment[start + len(self.query_open) : end]
        return " ".join(query.replace('"', " ").split()) if self.unquote_query else query.strip()

    def parse_action(self, segment: str) -> tuple[str, str] | None:
        """ "turn" protocols (Search-R1 `postprocess_predictions`): the first complete `<search>q</search>` or
        `<answer>a</answer>` of the segment as ("search" | "answer", stripped content); None when neither."""
        pattern = (
            f"{re.escape(self.query_open)}(.*?){re.escape(self.query_close)}"
            f"|{re.escape(self.answer_open)}(.*?){re.escape(self.answer_close)}"
        )
        m = re.search(pattern, segment, re.DOTALL)
        if m is None:
            return None
        return ("search", m.group(1).strip()) if m.group(1) is not None else ("answer", m.group(2).strip())

    def worked_response(self, query: str, passages: Sequence[Document], answer: str) -> str:
        """A well-formed response after the response prefix: think, one search with its documents, the answer
        (what the tiny searcher models are fine-tuned on)."""
        docs = self.format_documents(passages)
        final = f"{self.think_close}\n{self.answer_open} {self.answer_format.replace('{answer}', answer)} "
        final += self.answer_close
        search = f"{self.query_open} {query} {self.query_close}{docs}"
        if (
            self.response_prefix == self.think_open
        ):  # R1-Searcher: it starts inside <think> and searches there
            return f" I need to search. {search}The documents say {answer}. {final}"
        return (
            f"{self.think_open} I need to search. {self.think_close}\n{search}"
            f"{self.think_open} The documents say {answer}. {final}"
        )

    def format_documents(self, passages: Sequence[Document]) -> str:
        """The text inserted after a query: R1-Searcher numbers passages `(1)Title: text` one per line ('None'
        when there are none); ReSearch joins them by blank lines; Search-R1 writes `Doc i(Title: t) text`."""
        return (
            f"{self.after_query}{self.docs_open}{self.docs_body(passages)}{self.docs_close}{self.after_docs}"
        )


def _r1searcher_docs(passages: Sequence[Document]) -> str:
    lines = [
        f"({i + 1}){d.title}: {d.text}" if d.title else f"({i + 1}){d.text}" for i, d in enumerate(passages)
    ]
    return "\n" + ("\n".join(lines) if lines else "None") + "\n"


def _research_docs(passages: Sequence[Document]) -> str:
    # ReSearch vLLMRolloutWithSearch.batch_search: contents + blank line each, stripped, inside newlines.
    return "\n" + "".join(f"{d.contents}\n\n" for d in passages).strip() + "\n"


def _search_r1_docs(passages: Sequence[Document]) -> str:
    # Search-R1 _passages2string: title = first line of contents, text = the rest; the block is stripped.
    out = ""
    for i, d in enumerate(passages):
        title, _, text = d.contents.partition("\n")
        out += f"Doc {i + 1}(Title: {title}) {text}\n"
    return out.strip()


R1_SEARCHER_INSTRUCTIONS = (
    "The User asks a question, and the Assistant solves it. The Assistant first thinks about the reasoning "
    "process in the mind and then provides the User with the final answer. The output format of reasoning "
    "process and final answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, "
    'i.e., "<think> reasoning process here </think><answer> final answer here </answer>". During the thinking '
    "process, the Assistant can perform searching for uncertain knowledge if necessary with the format of "
    '"<|begin_of_query|> keyword_1 keyword_2 ... <|end_of_query|>". A query must involve only a single triple. '
    "Then, the search system will provide the Assistant with the retrieval information with the format of "
    '"<|begin_of_documents|> ...search results... <|end_of_documents|>".'
)

R1_SEARCHER = Protocol(
    name="r1searcher",
    instructions=R1_SEARCHER_INSTRUCTIONS,
    base_instructions=R1_SEARCHER_INSTRUCTIONS,
    think_open="<think>",
    think_close="</think>",
    answer_open="<answer>",
    answer_close="</answer>",
    query_open="<|begin_of_query|>",
    query_close="<|end_of_query|>",
    docs_open="<|begin_of_documents|>",
    docs_close="<|end_of_documents|>",
    after_query="\n\n",
    after_docs="\n\n",
    docs_body=_r1searcher_docs,
    stops=("<|end_of_query|>",),
    response_prefix="<think>",
    base_turn="User:{question}\nAssistant: <think>",
    base_sep="\n\n",
    system_message=True,
    actions="query",
    # k=3, at most 8 retrievals, 512 new tokens per segment, top_p 0.95 (R1-Searcher); 2048 is our budget.
    defaults=Budgets(top_k=3, max_searches=8, segment_tokens=512, max_response_tokens=2048, top_p=0.95),
    empty_query_ends=True,
    unquote_query=True,
)

# ReSearch src/verl/utils/dataset/template.py (re_search_template_sys / re_search_template).
_RESEARCH_TASK = (
    "During thinking, {who} can invoke the wikipedia search tool to search for fact information about specific "
    "topics if needed. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags respectively, and the search query and result are enclosed within <search> </search> and "
    "<result> </result> tags respectively. For example, <think> This is the reasoning process. </think> <search> "
    "search query here </search> <result> search result here </result> <think> This is the reasoning process. "
    "</think> <answer> The final answer is \\[ \\boxed{answer here} \\] </answer>. In the last part of the "
    "answer, the final exact answer is enclosed within \\boxed{} with latex format."
)
RESEARCH_INSTRUCTIONS = (
    "You are a helpful assistant that can solve the given question step by step with the help of the wikipedia "
    "search tool. Given a question, you need to first think about the reasoning process in the mind and then "
    "provide the answer. " + _RESEARCH_TASK.replace("{who}", "you")
)
RESEARCH_BASE_INSTRUCTIONS = (
    "A conversation between User and Assistant. The user asks a question, and the assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    + _RESEARCH_TASK.replace("{who}", "the assistant")
)

RESEARCH = Protocol(
    name="research",
    instructions=RESEARCH_INSTRUCTIONS,
    base_instructions=RESEARCH_BASE_INSTRUCTIONS,
    think_open="<think>",
    think_close="</think>",
    answer_open="<answer>",
    answer_close="</answer>",
    query_open="<search>",
    query_close="</search>",
    docs_open="<result>",
    docs_close="</result>",
    # vLLMRolloutWithSearch: f" <result>\\n{result}\\n</result>" right after `</search>`.
    after_query=" ",
    after_docs="",
    docs_body=_research_docs,
    stops=("</search>",),
    response_prefix="",
    base_turn="User: {question}. Assistant:",
    base_sep=" ",
    system_message=True,
    actions="query",
    # top_n 5, response_length 8192, no turn or search limit; a segment may use the whole remaining budget.
    defaults=Budgets(top_k=5, max_searches=None, segment_tokens=8192, max_response_tokens=8192, top_p=1.0),
    answer_format="The final answer is \\[ \\boxed{{answer}} \\]",
)

# Search-R1 scripts/data_process/nq_search.py make_prefix: the whole prompt is one user message.
SEARCH_R1_INSTRUCTIONS = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time you get "
    "new information. After reasoning, if you find you lack some knowledge, you can call a search engine by "
    "<search> query </search> and it will return the top searched results between <information> and "
    "</information>. You can search as many times as your want. If you find no further external knowledge "
    "needed, you can directly provide the answer inside <answer> and </answer>, without detailed illustrations. "
    "For example, <answer> Beijing </answer>."
)
# Search-R1 LLMGenerationManager.execute_predictions: the observation after a segment with no action.
SEARCH_R1_INVALID_ACTION = (
    "\nMy previous action is invalid. If I want to search, I should put the query between <search> and "
    "</search>. If I want to give the final answer, I should put the answer between <answer> and </answer>. "
    "Let me try again.\n"
)

SEARCH_R1 = Protocol(
    name="search-r1",
    instructions=SEARCH_R1_INSTRUCTIONS,
    base_instructions=SEARCH_R1_INSTRUCTIONS,
    think_open="<think>",
    think_close="</think>",
    answer_open="<answer>",
    answer_close="</answer>",
    query_open="<search>",
    query_close="</search>",
    docs_open="<information>",
    docs_close="</information>",
    after_query="\n\n",
    after_docs="\n\n",
    docs_body=_search_r1_docs,
    # The seed cuts each turn at the first </search>, else the first </answer>.
    stops=("</search>", "</answer>"),
    response_prefix="",
    base_turn="Question: {question}\n",
    base_sep=" ",
    system_message=False,
    actions="turn",
    # retriever.topk 3, max_response_length 500 per turn, max_obs_length 500, max_turns 4 (v0.3 scripts; the
    # paper's action budget), top_p 0.95 (its ppo_trainer.yaml); the whole response: 5 turns + 4 observations.
    defaults=Budgets(
        top_k=3,
        max_searches=None,
        segment_tokens=500,
        max_response_tokens=4500,
        top_p=0.95,
        max_turns=4,
        max_obs_tokens=500,
    ),
    invalid_action=SEARCH_R1_INVALID_ACTION,
)

PROTOCOLS = {p.name: p for p in (R1_SEARCHER, RESEARCH, SEARCH_R1)}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"rollout.protocol: unknown protocol {name!r} (known: {', '.join(PROTOCOLS)})")
    return PROTOCOLS[name]

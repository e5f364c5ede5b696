"""Search protocols: the tags, prompt template and document formatting of one seed, in one object.

The rollout loop and the reward rules read everything protocol-specific from a `Protocol`, so the ReSearch and
Search-R1 presets are new `Protocol` values, not changes to the loop. This module does no I/O and knows nothing
about tokenizers beyond the chat-message list it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol as TypingProtocol


class Example(TypingProtocol):
    """A worked example (config `rollout.examples`): the question and the response after `<think>`."""

    question: str
    response: str


@dataclass(frozen=True)
class Protocol:
    name: str
    instructions: str
    think_open: str
    think_close: str
    answer_open: str
    answer_close: str
    query_open: str
    query_close: str
    docs_open: str
    docs_close: str
    # Text the worker appends after the model's query-closing tag and before the documents.
    after_query: str
    # Text after the documents, before the model continues.
    after_docs: str

    @property
    def stop(self) -> list[str]:
        """Generation stops here so the worker can search."""
        return [self.query_close]

    def messages(
        self, question: str, system_prompt: str = "", examples: Sequence[Example] = ()
    ) -> list[dict[str, str]]:
        """Instruct model: instructions as system message, question as user message (R1-Searcher); worked
        examples go before the question as earlier user/assistant turns."""
        msgs = [{"role": "system", "content": system_prompt or self.instructions}]
        for ex in examples:
            msgs.append({"role": "user", "content": ex.question})
            msgs.append({"role": "assistant", "content": self.response_prefix + ex.response})
        msgs.append({"role": "user", "content": question})
        return msgs

    def base_prompt(self, question: str, system_prompt: str = "", examples: Sequence[Example] = ()) -> str:
        """Base model: instructions then `User:{q}\\nAssistant: <think>` (R1-Searcher), after any worked
        examples in the same shape."""
        shots = "".join(
            f"User:{ex.question}\nAssistant: {self.think_open}{ex.response}\n\n" for ex in examples
        )
        return f"{system_prompt or self.instructions}\n\n{shots}User:{question}\nAssistant: {self.think_open}"

    @property
    def response_prefix(self) -> str:
        """Appended after the chat template's generation prompt: the model starts inside its thinking."""
        return self.think_open

    def extract_query(self, segment: str) -> str | None:
        """The query of a segment that ended with the query-closing tag; None when there is none.
        An empty string means the model closed an empty query, which ends the rollout (R1-Searcher)."""
        end = segment.rfind(self.query_close)
        if end < 0:
            return None
        start = segment.rfind(self.query_open, 0, end)
        if start < 0:
            return None
        return " ".join(segment[start + len(self.query_open) : end].replace('"', " ").split())

    def format_documents(self, passages: Sequence[str]) -> str:
        """The text inserted after a query: R1-Searcher numbers passages `(1)text` one per line, or 'None'."""
        body = "\n".join(f"({i + 1}){p}" for i, p in enumerate(passages)) if passages else "None"
        return f"{self.after_query}{self.docs_open}\n{body}\n{self.docs_close}{self.after_docs}"


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
)

PROTOCOLS = {R1_SEARCHER.name: R1_SEARCHER}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"rollout.protocol: unknown protocol {name!r} (known: {', '.join(PROTOCOLS)})")
    return PROTOCOLS[name]

"""Iter-RetGen and IRCoT up to their answer prompt, with a word-overlap search over a few passages and a scripted
generator (the gathering rules are pure; the model's part is tested end to end in tests/integration/test_eval.py)."""

from searchrl.baselines import RAG, ircot, iter_retgen
from searchrl.protocol import R1_SEARCHER, Document

PASSAGES = [
    Document("Ann", "Ann was born in Oslo."),
    Document("Oslo", "Oslo is the capital of Norway."),
    Document("Bob", "Bob plays chess."),
]


class Search:
    def __init__(self):
        self.calls: list[tuple[list[str], int]] = []

    def __call__(self, queries, k):
        self.calls.append((list(queries), k))
        words = lambda t: set(t.lower().replace(".", "").replace("?", "").split())  # noqa: E731
        return [sorted(PASSAGES, key=lambda d: -len(words(q) & words(d.text)))[:k] for q in queries]


def test_iter_retgen_requeries_with_the_previous_answer():
    search, seen = Search(), []

    def generate(prompts, stop):
        seen.append((prompts, stop))
        return ["<think>x</think> <answer>Oslo</answer>" for _ in prompts]

    out = iter_retgen(R1_SEARCHER, generate, search, ["Where was Ann born?"], 1, 3, 2048)
    assert [q for q, _ in search.calls] == [
        ["Where was Ann born?"],
        ["Where was Ann born? x Oslo"],  # markup dropped from the previous answer
        ["Where was Ann born? x Oslo"],
    ]
    assert len(seen) == 2 and seen[0][1] == R1_SEARCHER.stop  # the last answer is the caller's
    assert out[0].searches == 3 and out[0].system == RAG
    assert out[0].user.startswith("Documents:\n(1)") and out[0].user.endswith("Question: Where was Ann born?")


def test_ircot_adds_passages_per_thought_and_stops_at_the_answer_sentence():
    search = Search()
    replies = iter(
        [["Ann was born in Oslo.", "So the answer is: chess."], ["Oslo is the capital of Norway."]]
    )

    def generate(prompts, stop):
        assert stop == ["\n", R1_SEARCHER.think_close]
        assert all(user.endswith("\nThought:") for _, user in prompts)
        return next(replies)

    out = ircot(R1_SEARCHER, generate, search, ["Where was Ann born?", "What does Bob play?"], 1, 2, 15, 2048)
    # question 1: the question, then each of its two thoughts; question 2 stopped at "So the answer is:"
    assert out[0].searches == 3 and out[1].searches == 1
    assert search.calls[1] == (["Ann was born in Oslo."], 1)
    assert out[0].user.count("\n(") == 2 and "(2)Oslo: Oslo is the capital" in out[0].user  # merged, no dups
    assert out[0].user.endswith("Reasoning so far: Ann was born in Oslo. Oslo is the capital of Norway.")
    assert out[1].user.endswith("Reasoning so far: So the answer is: chess.")


def test_ircot_caps_the_gathered_passages():
    out = ircot(
        R1_SEARCHER, lambda p, s: ["Bob plays chess."] * len(p), Search(), ["Ann Oslo"], 2, 2, 2, 2048
    )
    assert "(2)" in out[0].user and "(3)" not in out[0].user

"""The search loop's bookkeeping with a scripted engine: which tokens are masked, when rollouts end.
(The same loop runs on real vLLM in tests/integration/test_rollout_worker.py.)"""

from searchrl.protocol import R1_SEARCHER
from searchrl_rollout.engine import GenOut, GenParams
from searchrl_rollout.search_loop import LoopLimits, Sample, run_search_loop


class ScriptedEngine:
    """Plays back text segments, one per call and sample; a token is one character (ord)."""

    def __init__(self, scripts: list[list[str]]):
        self.scripts = scripts
        self.calls: list[int] = []

    def generate(self, prompts: list[list[int]], params: list[GenParams]) -> list[GenOut]:
        self.calls.append(len(prompts))
        outs = []
        for prompt, p in zip(prompts, params, strict=True):
            sid = prompt[0]
            text = self.scripts[sid].pop(0)[: p.max_tokens]
            stop = next((s for s in p.stop if text.endswith(s)), None)
            finish = "length" if len(text) == p.max_tokens and stop is None else "stop"
            outs.append(GenOut([ord(c) for c in text], [-0.1] * len(text), text, finish, stop))
        return outs

    def load_weights(self, directory: str) -> None:
        raise NotImplementedError


def tokenize(text: str) -> list[int]:
    return [ord(c) for c in text]


DEFAULT_LIMITS = LoopLimits(top_k=2, max_searches=2, segment_tokens=200, max_response_tokens=2000)


def run(scripts, limits=DEFAULT_LIMITS):
    searched: list[list[str]] = []

    def search(queries, k):
        searched.append(list(queries))
        return [[f"doc-{q}-{i}" for i in range(k)] for q in queries]

    engine = ScriptedEngine(scripts)
    samples = [Sample([i]) for i in range(len(scripts))]
    run_search_loop(engine, search, tokenize, R1_SEARCHER, samples, limits)
    return samples, searched, engine


def text_where(s: Sample, m: int) -> str:
    return "".join(chr(t) for t, k in zip(s.response_ids, s.loss_mask, strict=True) if k == m)


def test_mask_is_zero_exactly_on_documents_and_queries_are_batched():
    q = "<|begin_of_query|> alpha <|end_of_query|>"
    samples, searched, engine = run(
        [
            [f"think {q}", "so </think><answer> x </answer>"],
            ["hmm <|begin_of_query|> beta <|end_of_query|>", "</think><answer> y </answer>"],
            ["</think><answer> z </answer>"],
        ]
    )
    assert searched == [["alpha", "beta"]]  # one batched search call for the round
    assert engine.calls == [3, 2]  # one engine call per round for all active samples
    a = samples[0]
    docs = R1_SEARCHER.format_documents(["doc-alpha-0", "doc-alpha-1"])
    assert text_where(a, 0) == docs
    assert text_where(a, 1) == f"think {q}so </think><answer> x </answer>"  # the query tag stays unmasked
    assert a.num_searches == 1 and a.finish_reason == "eos"
    assert [lp for lp, m in zip(a.logprobs, a.loss_mask, strict=True) if m == 0] == [0.0] * len(docs)
    assert samples[2].num_searches == 0 and 0 not in samples[2].loss_mask


def test_empty_query_and_search_limit_end_the_rollout():
    q = "<|begin_of_query|> k <|end_of_query|>"
    samples, searched, _ = run(
        [
            ["<|begin_of_query|>  <|end_of_query|>"],
            [q, q, q, "never reached"],
        ]
    )
    assert samples[0].finish_reason == "empty_query" and samples[0].num_searches == 0
    assert samples[1].finish_reason == "max_searches" and samples[1].num_searches == 2
    assert searched == [["k"], ["k"]]


def test_budget_cuts_documents_and_segments():
    q = "<|begin_of_query|> k <|end_of_query|>"
    limits = LoopLimits(top_k=3, max_searches=5, segment_tokens=200, max_response_tokens=len(q) + 10)
    samples, _, _ = run([[q]], limits)
    s = samples[0]
    assert s.finish_reason == "length" and len(s.response_ids) == limits.max_response_tokens
    assert s.loss_mask.count(0) == 10  # documents cut to the budget left
    limits = LoopLimits(segment_tokens=5)
    samples, _, _ = run([["abcdefghij"]], limits)
    assert samples[0].finish_reason == "length" and len(samples[0].response_ids) == 5


def test_examples_come_before_the_question_as_earlier_turns():
    from transformers import AutoTokenizer

    from searchrl.config import ExampleConfig
    from searchrl.models import resolve_model
    from searchrl_rollout.search_loop import build_prompt_ids

    tok = AutoTokenizer.from_pretrained(resolve_model("builtin:tiny-random", "~/.cache/searchrl/models", 0))
    shot = ExampleConfig(
        question="Who built X?",
        response=" <|begin_of_query|> X <|end_of_query|> </think><answer> Y </answer>",
    )
    text = tok.decode(build_prompt_ids(tok, R1_SEARCHER, "Where is Z?", True, "Be brief.", [shot]))
    sys_at, shot_q, shot_a, q_at = (
        text.index(s) for s in ("Be brief.", "Who built X?", "<think> <|begin", "Where is Z?")
    )
    assert sys_at < shot_q < shot_a < q_at
    assert text.endswith("<think>")  # the model starts inside its thinking after the real question
    assert text.count("<|im_start|>assistant") == 2  # the example's answer turn and the open one

    base = R1_SEARCHER.base_prompt("Where is Z?", "Be brief.", [shot])
    assert base == (
        "Be brief.\n\nUser:Who built X?\nAssistant: <think> <|begin_of_query|> X <|end_of_query|> </think>"
        "<answer> Y </answer>\n\nUser:Where is Z?\nAssistant: <think>"
    )


def test_queries_are_truncated_and_split_into_calls_of_at_most_max_search_batch():
    scripts = [
        [f"<|begin_of_query|> q{i}{'x' * 50} <|end_of_query|>", "</think><answer> a </answer>"]
        for i in range(5)
    ]
    limits = LoopLimits(top_k=1, max_searches=2, max_query_chars=10, max_search_batch=2)
    samples, searched, _ = run(scripts, limits)
    assert [len(call) for call in searched] == [2, 2, 1]  # 5 queries of one round, at most 2 per call
    assert [q for call in searched for q in call] == [f"q{i}{'x' * 8}" for i in range(5)]
    assert all(s.queries == [searched[i // 2][i % 2]] and s.num_searches == 1 for i, s in enumerate(samples))


def test_a_failed_search_call_costs_only_its_samples():
    scripts = [
        [f"<|begin_of_query|> q{i} <|end_of_query|>", "</think><answer> a </answer>"] for i in range(3)
    ]

    def search(queries, k):
        if "q0" in queries:
            raise RuntimeError("retriever rejected the request")
        return [[f"doc-{q}"] for q in queries]

    samples = [Sample([i]) for i in range(3)]
    limits = LoopLimits(top_k=1, max_searches=2, max_search_batch=2)
    timings = run_search_loop(ScriptedEngine(scripts), search, tokenize, R1_SEARCHER, samples, limits)
    assert timings.search_calls == 2 and [str(e) for e in timings.search_errors] == [
        "retriever rejected the request"
    ]
    empty = R1_SEARCHER.format_documents([])
    assert [text_where(s, 0) for s in samples] == [empty, empty, R1_SEARCHER.format_documents(["doc-q2"])]
    assert [s.search_failures for s in samples] == [1, 1, 0]
    assert all(s.finish_reason == "eos" and s.num_searches == 1 for s in samples)

"""The search loop's bookkeeping with a scripted engine: which tokens are masked, when rollouts end.
(The same loop runs on real vLLM in tests/integration/test_rollout_worker.py.)"""

from searchrl.protocol import R1_SEARCHER, RESEARCH, SEARCH_R1, SEARCH_R1_INVALID_ACTION, Document
from searchrl_rollout.engine import GenOut, GenParams
from searchrl_rollout.search_loop import LoopLimits, Sample, run_search_loop


class ScriptedEngine:
    """Plays back text segments, one per call and sample; a token is one character (ord)."""

    def __init__(self, scripts: list[list[str]]):
        self.scripts = scripts
        self.calls: list[int] = []
        self.max_tokens: list[int] = []

    def generate(self, prompts: list[list[int]], params: list[GenParams]) -> list[GenOut]:
        self.calls.append(len(prompts))
        outs = []
        for prompt, p in zip(prompts, params, strict=True):
            sid = prompt[0]
            self.max_tokens.append(p.max_tokens)
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
        return [[Document("", f"doc-{q}-{i}") for i in range(k)] for q in queries]

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
    docs = R1_SEARCHER.format_documents([Document("", "doc-alpha-0"), Document("", "doc-alpha-1")])
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
        return [[Document("", f"doc-{q}")] for q in queries]

    samples = [Sample([i]) for i in range(3)]
    limits = LoopLimits(top_k=1, max_searches=2, max_search_batch=2)
    timings = run_search_loop(ScriptedEngine(scripts), search, tokenize, R1_SEARCHER, samples, limits)
    assert timings.search_calls == 2 and [str(e) for e in timings.search_errors] == [
        "retriever rejected the request"
    ]
    empty = R1_SEARCHER.format_documents([])
    assert [text_where(s, 0) for s in samples] == [
        empty,
        empty,
        R1_SEARCHER.format_documents([Document("", "doc-q2")]),
    ]
    assert [s.search_failures for s in samples] == [1, 1, 0]
    assert all(s.finish_reason == "eos" and s.num_searches == 1 for s in samples)


def run_protocol(protocol, scripts, limits):
    """`run` for another preset; passages are `Document`s titled by their query."""
    searched: list[list[str]] = []

    def search(queries, k):
        searched.append(list(queries))
        return [[Document(q, f"text-{i}") for i in range(k)] for q in queries]

    samples = [Sample([i]) for i in range(len(scripts))]
    run_search_loop(ScriptedEngine(scripts), search, tokenize, protocol, samples, limits)
    return samples, searched


def research_limits(**kw):
    return LoopLimits.from_budgets(RESEARCH.defaults, **kw)


def test_research_searches_every_search_tag_masks_the_results_and_never_sends_an_empty_query():
    samples, searched = run_protocol(
        RESEARCH,
        [
            [
                "<think> a </think> <search> q1 </search>",
                " <search>  </search>",
                " <search> q2 </search>",
                " <think> b </think> <answer> \\boxed{x} </answer>",
            ]
        ],
        research_limits(top_k=1),
    )
    s = samples[0]
    assert searched == [["q1"], ["q2"]]  # the empty query got an empty result block, not a retriever call
    results = [RESEARCH.format_documents([Document("q1", "text-0")]), RESEARCH.format_documents([])]
    results.append(RESEARCH.format_documents([Document("q2", "text-0")]))
    assert text_where(s, 0) == "".join(results)
    assert text_where(s, 1) == (
        "<think> a </think> <search> q1 </search> <search>  </search> <search> q2 </search>"
        " <think> b </think> <answer> \\boxed{x} </answer>"
    )
    assert s.num_searches == 3 and s.finish_reason == "eos" and s.queries == ["q1", "", "q2"]


def test_research_segments_may_use_the_whole_remaining_budget():
    engine = ScriptedEngine([["<search> q </search>", "done"]])
    limits = research_limits(top_k=1, max_response_tokens=100)
    search = lambda qs, k: [[Document("", "d")] for _ in qs]  # noqa: E731
    run_search_loop(engine, search, tokenize, RESEARCH, [Sample([0])], limits)
    assert engine.max_tokens == [100, 100 - len("<search> q </search>") - len(" <result>\nd\n</result>")]


def sr1_limits(**kw):
    return LoopLimits.from_budgets(SEARCH_R1.defaults, **{"top_k": 1, "max_turns": 2, **kw})


def test_search_r1_each_segment_is_an_action_and_answers_end_the_rollout():
    obs = SEARCH_R1.format_documents([Document("q1", "text-0")])
    samples, searched = run_protocol(
        SEARCH_R1,
        [
            ["<think> a </think>\n<search> q1 </search>", "\n<think> b </think>\n<answer> x </answer>"],
            ["<answer> y </answer>"],
        ],
        sr1_limits(),
    )
    a, b = samples
    assert searched == [["q1"]]
    assert text_where(a, 0) == obs
    assert (
        text_where(a, 1)
        == "<think> a </think>\n<search> q1 </search>\n<think> b </think>\n<answer> x </answer>"
    )
    assert (a.finish_reason, a.num_searches, a.turns) == ("answer", 1, 2)
    assert (b.finish_reason, b.turns) == ("answer", 1) and 0 not in b.loss_mask


def test_search_r1_invalid_actions_get_the_corrective_message_then_a_last_turn_without_search():
    eos = "\x03"  # the scripted engine's EOS: a segment that ends without a stop string
    samples, searched = run_protocol(
        SEARCH_R1,
        [["I do not know" + eos, "<search> q1 </search>", "<search> q2 </search>", "never reached"]],
        sr1_limits(),
    )
    s = samples[0]
    obs = SEARCH_R1.format_documents([Document("q1", "text-0")])
    assert searched == [["q1"]]  # the third generation is the final one: its search is not run
    # the EOS before the corrective message is dropped (the seed decodes segments without special tokens)
    assert "".join(chr(t) for t in s.response_ids) == (
        "I do not know" + SEARCH_R1_INVALID_ACTION + "<search> q1 </search>" + obs + "<search> q2 </search>"
    )
    assert text_where(s, 0) == SEARCH_R1_INVALID_ACTION + obs  # everything the worker inserted, nothing else
    assert (s.finish_reason, s.turns, s.num_searches) == ("max_turns", 3, 1)
    assert len(s.logprobs) == len(s.response_ids)


def test_search_r1_a_segment_cut_by_length_is_an_invalid_action_not_the_end():
    samples, _ = run_protocol(SEARCH_R1, [["x" * 50, "<answer> a </answer>"]], sr1_limits(segment_tokens=25))
    s = samples[0]
    assert (
        "".join(chr(t) for t in s.response_ids)
        == "x" * 25 + SEARCH_R1_INVALID_ACTION + "<answer> a </answer>"
    )
    assert s.finish_reason == "answer"


def test_search_r1_observations_are_cut_to_max_obs_tokens():
    samples, _ = run_protocol(
        SEARCH_R1, [["<search> q </search>", "<answer> a </answer>"]], sr1_limits(top_k=3, max_obs_tokens=20)
    )
    s = samples[0]
    assert text_where(s, 0) == SEARCH_R1.format_documents([Document("q", f"text-{i}") for i in range(3)])[:20]
    assert s.finish_reason == "answer"

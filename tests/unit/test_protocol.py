"""The three protocol presets against the seeds' own strings: prompts (base and instruct), documents, stops,
budgets. The expected strings are written out here from the seeds' files, not built from the module."""

import pytest

from searchrl.config import RolloutConfig
from searchrl.protocol import R1_SEARCHER, RESEARCH, SEARCH_R1, Document, get_protocol

Q = "who wrote the book the origin of species?"
DOCS = [
    Document("Charles Darwin", "Charles Robert Darwin was an English naturalist."),
    Document("", "untitled"),
]

# ReSearch src/verl/utils/dataset/template.py (3b2fd14): re_search_template_sys / re_search_template.
RESEARCH_SYS = (
    "You are a helpful assistant that can solve the given question step by step with the help of the wikipedia "
    "search tool. Given a question, you need to first think about the reasoning process in the mind and then "
    "provide the answer. During thinking, you can invoke the wikipedia search tool to search for fact information "
    "about specific topics if needed. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags respectively, and the search query and result are enclosed within <search> </search> "
    "and <result> </result> tags respectively. For example, <think> This is the reasoning process. </think> "
    "<search> search query here </search> <result> search result here </result> <think> This is the reasoning "
    "process. </think> <answer> The final answer is \\[ \\boxed{answer here} \\] </answer>. In the last part of the "
    "answer, the final exact answer is enclosed within \\boxed{} with latex format."
)
RESEARCH_BASE = (
    "A conversation between User and Assistant. The user asks a question, and the assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "During thinking, the assistant can invoke the wikipedia search tool to search for fact information about "
    "specific topics if needed. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags respectively, and the search query and result are enclosed within <search> </search> and "
    "<result> </result> tags respectively. For example, <think> This is the reasoning process. </think> <search> "
    "search query here </search> <result> search result here </result> <think> This is the reasoning process. "
    "</think> <answer> The final answer is \\[ \\boxed{answer here} \\] </answer>. In the last part of the answer, "
    "the final exact answer is enclosed within \\boxed{} with latex format. User: " + Q + ". Assistant:"
)
# Search-R1 scripts/data_process/nq_search.py make_prefix (a14dc3a).
SEARCH_R1_PROMPT = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time you get "
    "new information. After reasoning, if you find you lack some knowledge, you can call a search engine by "
    "<search> query </search> and it will return the top searched results between <information> and "
    "</information>. You can search as many times as your want. If you find no further external knowledge "
    "needed, you can directly provide the answer inside <answer> and </answer>, without detailed illustrations. "
    "For example, <answer> Beijing </answer>. Question: " + Q + "\n"
)


def test_research_prompts_are_the_seeds_templates():
    assert RESEARCH.messages(Q) == [
        {"role": "system", "content": RESEARCH_SYS},
        {"role": "user", "content": Q},
    ]
    assert RESEARCH.base_prompt(Q) == RESEARCH_BASE
    assert RESEARCH.response_prefix == ""  # the model starts right after the generation prompt
    assert RESEARCH.stop == ["</search>"]


def test_search_r1_prompt_is_one_user_message_in_both_templates():
    assert SEARCH_R1.messages(Q) == [{"role": "user", "content": SEARCH_R1_PROMPT}]
    assert SEARCH_R1.base_prompt(Q) == SEARCH_R1_PROMPT
    assert SEARCH_R1.response_prefix == ""
    assert SEARCH_R1.stop == ["</search>", "</answer>"]


def test_system_prompt_and_examples_replace_the_instructions_in_every_preset():
    ex = type("Ex", (), {"question": "Who built X?", "response": " <search> X </search> ..."})()
    msgs = SEARCH_R1.messages(Q, "Be brief.", [ex])
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[0]["content"] == "Be brief. Question: Who built X?\n" and msgs[2]["content"].startswith(
        "Be brief."
    )
    assert RESEARCH.base_prompt(Q, "Be brief.", [ex]) == (
        "Be brief. User: Who built X?. Assistant: <search> X </search> ...\n\nUser: " + Q + ". Assistant:"
    )


def test_documents_in_each_seeds_format():
    # R1-Searcher: numbered lines of 'Title: text'.
    assert R1_SEARCHER.format_documents(DOCS) == (
        "\n\n<|begin_of_documents|>\n(1)Charles Darwin: Charles Robert Darwin was an English naturalist."
        "\n(2)untitled\n<|end_of_documents|>\n\n"
    )
    # ReSearch: the passages' `contents` ('"Title"\ntext', as in its wiki corpus) joined by blank lines.
    assert RESEARCH.format_documents(DOCS) == (
        ' <result>\n"Charles Darwin"\nCharles Robert Darwin was an English naturalist.\n\nuntitled\n</result>'
    )
    assert RESEARCH.format_documents([]) == " <result>\n\n</result>"
    # Search-R1 _passages2string: title = the contents' first line, text = the rest; stripped.
    assert SEARCH_R1.format_documents(DOCS) == (
        '\n\n<information>Doc 1(Title: "Charles Darwin") Charles Robert Darwin was an English naturalist.\n'
        "Doc 2(Title: untitled)</information>\n\n"  # the seed strips the trailing ' \n' away
    )
    assert SEARCH_R1.format_documents([]) == "\n\n<information></information>\n\n"


def test_budgets_default_to_the_protocols_and_config_overrides_win():
    assert RolloutConfig().budgets() == R1_SEARCHER.defaults
    research = RolloutConfig(protocol="research").budgets()
    assert (research.top_k, research.max_searches, research.max_response_tokens) == (5, None, 8192)
    assert research.segment_tokens == 8192 and research.top_p == 1.0  # one segment may use the whole budget
    sr1 = RolloutConfig(protocol="search-r1", top_k=2).budgets()
    assert (sr1.top_k, sr1.max_turns, sr1.max_obs_tokens, sr1.segment_tokens) == (2, 4, 500, 500)
    r1 = R1_SEARCHER.defaults
    assert (r1.top_k, r1.max_searches, r1.segment_tokens, r1.top_p, r1.max_turns) == (3, 8, 512, 0.95, None)


def test_unknown_protocol_names_the_field():
    with pytest.raises(ValueError, match="rollout.protocol: unknown protocol 'x'"):
        get_protocol("x")
    assert get_protocol("search-r1") is SEARCH_R1

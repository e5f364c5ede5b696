"""`searchrl demo --protocol P`: each protocol's demo config (and the tiny e2e config) is in that protocol, and
its worked examples are responses its own reward preset grades as well-formed and right."""

import pytest

from searchrl.config import load_config
from searchrl.demo import demo_config_file
from searchrl.evaluate import predicted_answer
from searchrl.protocol import get_protocol
from searchrl_reward.rules import score

TINY = {"r1searcher": "configs/tiny.yaml", "research": "configs/tiny-research.yaml"}
TINY["search-r1"] = "configs/tiny-search-r1.yaml"


@pytest.mark.parametrize("protocol", ["r1searcher", "research", "search-r1"])
def test_demo_examples_are_well_formed_in_their_protocol(protocol):
    cfg = load_config(demo_config_file(protocol))
    assert cfg.rollout.protocol == protocol == load_config(TINY[protocol]).rollout.protocol
    p = get_protocol(protocol)
    preset = cfg.trainer.stages[-1].reward_preset
    assert cfg.rollout.examples
    for ex in cfg.rollout.examples:
        answer = predicted_answer(p, ex.response)
        # As the worker decodes it after an EOS stop (Search-R1 ends at </answer>; its reward drops one EOS).
        result = score(preset, ex.question, ex.response + "<|im_end|>", [answer])
        assert result.format_ok and result.em == 1.0 and result.num_searches == 1, (protocol, result)


def test_the_protocol_flag_picks_the_demo_config():
    from searchrl.cli import build_parser

    args = build_parser().parse_args(["demo", "--protocol", "search-r1"])
    assert args.protocol == "search-r1" and args.config is None
    assert demo_config_file(None) == demo_config_file("r1searcher") == "configs/demo-cpu.yaml"
    assert demo_config_file("research") == "configs/demo-cpu-research.yaml"


def test_the_demo_pins_the_learner_to_its_own_core_only_on_two_cores():
    from searchrl.demo import pin_two_cores

    cfg = load_config(demo_config_file(None))
    assert pin_two_cores(cfg, {2, 5})
    aff = cfg.run.cpu_affinity
    assert (aff.trainer, aff.rollout, aff.retriever, aff.reward) == ("5", "2", "2", "2")
    assert cfg.rollout.cpu_threads_bind == "2"  # vLLM's OMP threads on the core it runs on
    for cpus in ({0}, {0, 1, 2, 3}):  # one core: nothing to split; more: pinning would starve the engine
        cfg = load_config(demo_config_file(None))
        assert not pin_two_cores(cfg, cpus) and not cfg.run.cpu_affinity.trainer
    cfg = load_config(demo_config_file(None))
    cfg.run.cpu_affinity.trainer = "0"  # the user's own pinning wins
    assert not pin_two_cores(cfg, {0, 1}) and cfg.run.cpu_affinity.rollout == ""

"""Micro-batch trimming in the learner: a row's response log-probs must not depend on which rows share its
micro-batch or how much padding was cut (left of prompts, right of responses)."""

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from searchrl.records import Trajectory
from searchrl_trainer import algos
from searchrl_trainer.learner import collate


def _traj(i: int, p: int, r: int, rng: np.random.Generator) -> Trajectory:
    return Trajectory(
        traj_id=f"t/{i}",
        task_id="t",
        sample_index=i,
        group_size=4,
        policy_version=0,
        prompt_ids=rng.integers(1, 100, p).astype(np.int32),
        response_ids=rng.integers(1, 100, r).astype(np.int32),
        loss_mask=np.ones(r, np.uint8),
        logprobs=np.zeros(r, np.float32),
        reward=float(i),
    )


def _logprobs(model: torch.nn.Module, b) -> torch.Tensor:  # noqa: ANN001
    R = b.response_ids.shape[1]
    out = model(
        input_ids=b.input_ids,
        attention_mask=b.attention_mask,
        position_ids=b.position_ids,
        use_cache=False,
        logits_to_keep=R + 1,
    )
    return algos.token_logprobs(out.logits[:, :R].float(), b.response_ids)


def test_rows_trim_padding_and_keep_logprobs() -> None:
    rng = np.random.default_rng(0)
    trajs = [_traj(0, 30, 5, rng), _traj(1, 4, 40, rng), _traj(2, 6, 3, rng), _traj(3, 12, 9, rng)]
    b = collate(trajs, pad_id=0)
    assert b.input_ids.shape == (4, 30 + 40)

    short = b.rows(torch.tensor([2, 3]))
    assert short.prompt_len == 12 and short.response_ids.shape == (2, 9)  # 18 prompt and 31 response pad cut
    assert short.rewards.tolist() == [2.0, 3.0]
    assert torch.equal(short.response_ids[0, :3], torch.from_numpy(trajs[2].response_ids).long())
    assert short.mask[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        full = _logprobs(model, b)
        for idx in b.micro_batches(2):
            part = _logprobs(model, b.rows(idx))
            r = part.shape[1]
            for j, row in enumerate(idx.tolist()):
                n = len(trajs[row].response_ids)
                assert n <= r
                torch.testing.assert_close(part[j, :n], full[row, :n], atol=1e-5, rtol=1e-5)


def test_micro_batches_cover_every_row_once_grouped_by_length() -> None:
    rng = np.random.default_rng(1)
    lengths = [(5, 50), (5, 2), (5, 48), (5, 3), (5, 49), (5, 1)]
    b = collate([_traj(i, p, r, rng) for i, (p, r) in enumerate(lengths)], pad_id=0)
    mbs = b.micro_batches(2)
    assert sorted(torch.cat(mbs).tolist()) == list(range(6))
    assert [sorted(m.tolist()) for m in mbs] == [[1, 5], [2, 3], [0, 4]]

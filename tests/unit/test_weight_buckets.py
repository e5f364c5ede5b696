"""The bucketed broadcast of the weight-sync fast path (searchrl/weightsync.py). gloo stands in for NCCL: the
same plan, flattening and unflattening run, only the transport differs."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest
import torch

from searchrl.redisio import free_port
from searchrl.weightsync import broadcast_weights, plan_buckets, receive_weights


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(64, 16, generator=g).to(torch.bfloat16),  # 2048 B
        "layer.0.weight": torch.randn(16, 16, generator=g).to(torch.bfloat16),  # 512 B
        "layer.0.norm": torch.randn(16, generator=g),  # fp32: never shares a bucket with bf16
        "layer.1.weight": torch.randn(16, 16, generator=g).to(torch.bfloat16),
        "big": torch.randn(40, 40, generator=g).to(torch.bfloat16),  # 3200 B > one bucket: alone
    }


def test_plan_groups_consecutive_tensors_of_one_dtype_up_to_the_bucket_size() -> None:
    meta = [(k, tuple(v.shape), v.dtype) for k, v in _state().items()]
    plan = plan_buckets(meta, bucket_bytes=2560)
    assert [[s.name for s in b] for b in plan] == [
        ["embed.weight", "layer.0.weight"],  # 2048 + 512 = 2560 fits exactly
        ["layer.0.norm"],
        ["layer.1.weight"],
        ["big"],
    ]
    assert [s.offset for s in plan[0]] == [0, 1024]  # in elements of the bucket's dtype


def test_plan_rejects_a_bucket_size_below_one() -> None:
    with pytest.raises(ValueError, match="bucket_bytes"):
        plan_buckets([("w", (2,), torch.float32)], bucket_bytes=0)


def _rank(rank: int, port: int, queue: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    if rank == 0:
        broadcast_weights(_state(), bucket_bytes=2560, group=None)
    else:
        queue.put({k: v.clone() for k, v in receive_weights(group=None)})
    torch.distributed.destroy_process_group()


def test_receiver_gets_every_tensor_bit_exact_over_gloo() -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = queue.get(timeout=120)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    want = _state()
    assert list(got) == list(want)  # in the sender's order, so a loader sees a stable sequence
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_nccl_weight_sync_without_gpus_is_a_clear_error(tiny_config) -> None:
    from searchrl.config import ConfigError
    from searchrl_trainer.dist import launch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    tiny_config.trainer.weight_sync = "nccl"
    with pytest.raises(ConfigError, match=r"trainer\.weight_sync: 'nccl' needs 1 CUDA GPU"):
        launch(tiny_config, "unused: refused before any model is loaded")


def test_push_bucket_size_defaults_per_backend_and_the_configured_size_wins(tiny_config) -> None:
    """gloo pushes in 32 MiB buckets unless told otherwise (256 MiB made it no faster than the pull on CPU),
    nccl in 256 MiB; `trainer.weight_bucket_bytes` overrides both."""
    from searchrl.weight_transfer import bucket_bytes, push_backend

    assert tiny_config.trainer.weight_bucket_bytes is None
    assert bucket_bytes(push_backend("gloo"), None) == 32 << 20
    assert bucket_bytes(push_backend("nccl"), None) == 256 << 20
    assert bucket_bytes(push_backend("gloo"), 8 << 20) == 8 << 20

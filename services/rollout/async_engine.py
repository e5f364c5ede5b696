"""vLLM's asynchronous engine (`AsyncLLM`) for callers that serve many requests at once and stream them.

Contract:
- `AsyncVllmEngine` starts one engine core (a spawned process: construct it in a `__main__`-guarded program)
  and takes any number of concurrent requests from coroutines of ONE asyncio event loop; vLLM batches them.
- `await generate(prompt_ids, params)` -> the same `GenOut` as `VllmEngine.generate` gives for that prompt (token
  ids, text, the sampled tokens' log-probs, finish reason, the stop string that ended it); greedy decoding gives
  the same tokens as the offline engine.
- `stream(prompt_ids, params)` yields `Delta`s as the engine produces them (new token ids, their text and
  log-probs); the last has `finish_reason` set; `join_deltas` makes them one `GenOut`. Closing the iterator early, or
  cancelling the task that reads it, aborts the request in the engine.
- `GenParams.seed` is honoured where vLLM allows per-request seeds (GPU); on CPU requests share the engine's
  seeded generator (`engine.per_request_seeds`).
- `await load_weights(directory)` reloads weights in place from a folder of safetensors, as `VllmEngine` does
  (requests in flight should be drained first); `shutdown()` stops the engine core.
This module knows nothing about search protocols: stop strings come in `GenParams`.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from searchrl.config import RolloutConfig
from searchrl_rollout.engine import (
    GenOut,
    GenParams,
    engine_kwargs,
    per_request_seeds,
    sampling_params,
    token_logprobs,
)


@dataclass(frozen=True)
class Delta:
    """What one step of a streamed request added; `finish_reason` is set on the last ("stop" or "length")."""

    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: str | None = None
    stop_string: str | None = None


def join_deltas(deltas: Iterable[Delta]) -> GenOut:
    """The `GenOut` of a whole streamed request."""
    ids: list[int] = []
    lps: list[float] = []
    text, finish, stop = "", "stop", None
    for d in deltas:
        ids += d.token_ids
        lps += d.logprobs
        text += d.text
        finish, stop = d.finish_reason or finish, d.stop_string or stop
    return GenOut(ids, lps, text, finish, stop)


class AsyncVllmEngine:
    """vLLM `AsyncLLM` with the project's `GenParams` / `GenOut`."""

    def __init__(self, model_path: str, **engine_args: Any) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(model=model_path, **engine_args))
        self.per_request_seeds = per_request_seeds()
        self._ids = (f"{uuid.uuid4().hex[:8]}-{i}" for i in itertools.count())

    @staticmethod
    def from_config(
        model_path: str, rc: RolloutConfig, seed: int, weight_transfer: str | None = None
    ) -> AsyncVllmEngine:
        """The engine of `rc`; `weight_transfer` (a backend of searchrl/weight_transfer.py) lets it take pushed
        weights (`init_transfer`, `start_update`, `update`, `finish_update`)."""
        return AsyncVllmEngine(model_path, **engine_kwargs(rc, seed, weight_transfer))

    async def stream(self, prompt_ids: list[int], params: GenParams) -> AsyncIterator[Delta]:
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        sp = sampling_params(params, self.per_request_seeds, output_kind=RequestOutputKind.DELTA)
        outputs = self.llm.generate(TokensPrompt(prompt_token_ids=list(prompt_ids)), sp, next(self._ids))
        # aclosing: an early close of this iterator closes vLLM's, which aborts the request in the engine.
        async with aclosing(outputs) as outs:
            async for out in outs:
                c = out.outputs[0]
                ids = list(c.token_ids)
                done = out.finished
                yield Delta(
                    ids,
                    c.text,
                    token_logprobs(c.logprobs, ids),
                    (c.finish_reason or "stop") if done else None,
                    c.stop_reason if done and isinstance(c.stop_reason, str) else None,
                )

    async def generate(self, prompt_ids: list[int], params: GenParams) -> GenOut:
        return join_deltas([d async for d in self.stream(prompt_ids, params)])

    async def load_weights(self, directory: str) -> None:
        await self.llm.collective_rpc("reload_weights", kwargs={"weights_path": directory})
        await self.llm.reset_prefix_cache()

    # ---- pushed weights (vLLM's native weight-transfer API; the engine needs `weight_transfer`) ----------------

    async def init_transfer(self, init_info: dict[str, Any]) -> None:
        """Join the trainer's transfer group (blocks until the trainer's rank 0 joins too)."""
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        await self.llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info=init_info))

    async def start_update(self) -> None:
        await self.llm.start_weight_update()

    async def update(self, update_info: dict[str, Any]) -> None:
        """Receive one round of weights (blocks until the trainer has broadcast them all)."""
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        await self.llm.update_weights(WeightTransferUpdateRequest(update_info=update_info))

    async def finish_update(self) -> None:
        """Finalise the pushed weights in place and drop the prefix cache computed with the old ones."""
        await self.llm.finish_weight_update()
        await self.llm.reset_prefix_cache()

    def unfinished(self) -> int:
        """Requests the engine still holds (streams neither finished nor aborted)."""
        return self.llm.get_num_unfinished_requests()

    def shutdown(self) -> None:
        self.llm.shutdown()

"""The embedder's transformer run as a TorchScript trace on CPU.

Why: the eager Hugging Face forward is hundreds of small torch calls, each returning to Python and taking the
GIL back. Under the service that GIL is also what the gRPC/HTTP threads need to hand requests to the batcher,
so two batch loops encoding at once starve them and batches shrink. A trace runs the whole forward in C++
with the GIL released, and it needs no compile step (torch.compile would add a minute to every start on a
small CPU box). `torch.jit.trace` is deprecated in torch 2.13 but works; if a later torch drops it, the model
simply stays eager.

Contract: `trace_transformer(model, probes)` swaps the forward of a sentence-transformers model's Hugging Face
module for a trace of it and returns None, but only when the traced model reproduces the eager embeddings to
within `TOLERANCE`: of the probes as one padded batch (the shapes it was traced with) and of each probe alone
(other batch sizes and lengths, so a trace that froze a shape is caught). Give probes of different lengths,
one at the model's maximum. Otherwise the model is left exactly as it was and the reason comes back as a
string. A call whose inputs are not the traced ones (another set of tensors, hidden states asked for) runs the
eager forward. The traced module is shared by concurrent callers (TorchScript inference is thread-safe).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

TOLERANCE = 1e-4


def trace_transformer(model: Any, probes: list[str]) -> str | None:
    import numpy as np
    import torch

    hf = getattr(model[0], "auto_model", None)
    if not isinstance(hf, torch.nn.Module):
        return f"the first module ({type(model[0]).__name__}) has no Hugging Face model to trace"
    seen: dict[str, Any] = {}
    eager_forward = hf.forward

    def record(**kwargs: Any) -> Any:
        seen.update(kwargs)
        return eager_forward(**kwargs)

    def encode_all() -> list:
        return [
            model.encode(batch, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            for batch in checks
        ]

    checks = [[p] for p in probes] + [probes]  # the whole batch last: its inputs are the ones recorded
    hf.forward = record
    try:
        expected = encode_all()
    finally:
        del hf.forward  # the class's forward again
    names = [k for k, v in seen.items() if isinstance(v, torch.Tensor)]
    constants = {k: v for k, v in seen.items() if k not in names}

    class Positional(torch.nn.Module):  # tracing takes positional tensors
        def __init__(self) -> None:
            super().__init__()
            self.hf = hf

        def forward(self, *tensors: torch.Tensor) -> Any:
            return dict(self.hf(**dict(zip(names, tensors, strict=True)), **constants))

    hf_log = logging.getLogger("transformers")
    level = hf_log.level
    try:
        # quiet: the deprecation notice, tracer warnings about Python values, and transformers' notes on the
        # attributes the tracer reads (loss_type); the checks below replace the tracer's own (check_trace)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf_log.setLevel(logging.ERROR)
            example = tuple(seen[k] for k in names)
            traced = torch.jit.trace(Positional().eval(), example, strict=False, check_trace=False)
    except Exception as e:  # noqa: BLE001 - any model that cannot be traced stays eager
        return f"tracing failed: {type(e).__name__}: {e}"[:300]
    finally:
        hf_log.setLevel(level)

    keys = set(names) | set(constants)

    def forward(**kwargs: Any) -> Any:
        if kwargs.keys() != keys or any(kwargs[k] != v for k, v in constants.items()):
            return eager_forward(**kwargs)
        return traced(*(kwargs[k] for k in names))

    hf.forward = forward
    try:
        error = max(float(np.abs(g - e).max()) for g, e in zip(encode_all(), expected, strict=True))
        reason = (
            None
            if error <= TOLERANCE
            else f"the traced model's embeddings differ from the eager ones by {error:.2g}"
        )
    except Exception as e:  # noqa: BLE001
        reason = f"the traced model failed: {type(e).__name__}: {e}"[:300]
    if reason:
        del hf.forward  # the eager forward again
    return reason

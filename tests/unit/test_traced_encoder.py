"""The traced embedder (retriever.trace_encoder): it gives the eager model's embeddings at every batch size and
length, not only the ones it was traced with, and a trace that fails or differs leaves the model eager."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from searchrl.config import Config
from searchrl_retriever.backend import make_embedder

TEXTS = [
    "who wrote it",
    "a",
    "when was the bridge over the river built and by whom " * 3,
    "word " * 2000,  # truncated to the model's maximum length
]


def _embedder(trace: bool):  # noqa: ANN202
    cfg = Config()
    cfg.retriever.device, cfg.retriever.trace_encoder = "cpu", trace
    return make_embedder(cfg)


@pytest.fixture(scope="module")
def eager():  # noqa: ANN201
    return _embedder(False)


def test_the_trace_gives_the_eager_embeddings_at_other_shapes(eager) -> None:  # noqa: ANN001
    traced = _embedder(True)
    assert traced.traced and not eager.traced
    assert "forward" in vars(traced.model[0].auto_model)  # the trace is what runs
    for batch in (TEXTS, TEXTS[:1], TEXTS[1:3], TEXTS * 9):  # 1 to 36 texts, 1 to the maximum tokens
        np.testing.assert_allclose(traced.encode(batch), eager.encode(batch), atol=1e-5)
    queries = ["q" * n for n in range(1, 40)]
    np.testing.assert_allclose(traced.encode_queries(queries), eager.encode_queries(queries), atol=1e-5)


def test_a_trace_that_differs_from_the_eager_model_is_not_used(monkeypatch, caplog, eager) -> None:  # noqa: ANN001
    real = torch.jit.trace

    def wrong(module, inputs, **kw):  # noqa: ANN001, ANN202 - a trace whose outputs are off by 0.1
        traced = real(module, inputs, **kw)
        return lambda *a: {k: v + 0.1 for k, v in traced(*a).items()}

    monkeypatch.setattr(torch.jit, "trace", wrong)
    embedder = _embedder(True)
    assert not embedder.traced
    assert "forward" not in vars(embedder.model[0].auto_model)  # the eager forward again
    assert "differ from the eager ones" in caplog.text and "retriever.trace_encoder" in caplog.text
    np.testing.assert_array_equal(embedder.encode(TEXTS), eager.encode(TEXTS))


def test_a_model_that_cannot_be_traced_stays_eager(monkeypatch, caplog, eager) -> None:  # noqa: ANN001
    def fail(*_a, **_k):  # noqa: ANN202
        raise RuntimeError("unsupported op")

    monkeypatch.setattr(torch.jit, "trace", fail)
    embedder = _embedder(True)
    assert not embedder.traced
    assert "tracing failed: RuntimeError: unsupported op" in caplog.text
    np.testing.assert_array_equal(embedder.encode(TEXTS), eager.encode(TEXTS))

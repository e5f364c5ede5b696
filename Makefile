# `make setup` installs into a virtual environment of the project's own (VENV, default .venv), created with the
# system's python3, so the global interpreter is never touched (PEP 668 systems included). Every target runs its
# tools from there. `make VENV= ...` uses whatever `python` is first on PATH instead (an environment you manage).
VENV ?= .venv
BASE_PY ?= python3
ifeq ($(strip $(VENV)),)
PY ?= python
STAMP := .setup.stamp
else
STAMP := $(VENV)/.setup.stamp
PY ?= $(abspath $(VENV))/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export VIRTUAL_ENV := $(abspath $(VENV))
endif
PROTOS := $(wildcard proto/searchrl/proto/*.proto)

.PHONY: setup proto test test-all test-slow test-chaos test-fuzz test-deploy lint demo up bench bench-demo bench-retriever clean helm-schema smoke-compose

$(STAMP): pyproject.toml scripts/install-cpu.sh
ifneq ($(strip $(VENV)),)
	test -x $(PY) || $(BASE_PY) -m venv $(VENV)
endif
	PY=$(PY) bash scripts/install-cpu.sh
	touch $(STAMP)

setup: $(STAMP)  ## install the project, the CPU engines and dev tools into .venv (once; redone when pyproject changes)

proto:  ## regenerate searchrl/proto/*_pb2*.py from proto/ (never edit the output)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)

test: $(STAMP)  ## the default test suite (what CI runs)
	$(PY) -m pytest -q

test-slow: $(STAMP)  ## heavy runs kept out of `make test` (several vLLM engines or learner ranks, the other protocols' e2e); CI runs it
	$(PY) -m pytest -q -m slow

test-chaos: $(STAMP)  ## fault injection on the whole system: 6 runs of 8 steps (12-25 min on 2 cores); table: $$CHAOS_REPORT
	$(PY) -m pytest -q -m chaos tests/chaos

test-fuzz: $(STAMP)  ## the fuzz suite only (tests/fuzz, also part of `make test`; ~1.5 min); report: $$FUZZ_REPORT
	$(PY) -m pytest -q -m fuzz tests/fuzz

test-deploy: $(STAMP)  ## Helm chart, compose file and Dockerfile checks only (fast; no Docker engine, no cluster)
	$(PY) -m pytest -q tests/deploy

helm-schema:  ## regenerate deploy/helm/searchrl/values.schema.json from the config tree
	$(PY) deploy/helm/values_schema.py

smoke-compose:  ## real docker-compose run on podman, as root on Debian 12 (deploy/README.md); ~25 min cold
	bash deploy/smoke/compose-podman.sh 2>&1 | tee deploy/smoke/last-run.log

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

demo: $(STAMP)  ## the main job on the embedded defaults: SmolLM2-135M learns to search the bundled world (~29 min)
	$(PY) -m searchrl.cli demo

up: $(STAMP)  ## the whole system as local processes: 3 steps of the tiny config (~3 min)
	$(PY) -m searchrl.cli up -c configs/tiny.yaml --steps 3

bench: $(STAMP)
	$(PY) bench/trajectory_codec.py
	$(PY) bench/retriever_batching.py
	$(PY) bench/weight_sync.py
	$(PY) bench/learner_step.py

bench-demo: $(STAMP)  ## rerun the demo at seed 0 and print before/after held-out CEM (~29 min)
	$(PY) bench/demo_learning.py --seed 0

bench-retriever: $(STAMP)  ## service vs R1-Searcher-style baseline vs the batching limit, 1/8/32 clients (~10 min; quiet box)
	$(PY) bench/retriever_throughput.py --seconds 6 --repeats 2 --out bench/results/retriever-throughput.md

clean:  ## remove runs and the setup stamp (keeps .venv; `rm -rf .venv` for a full reinstall)
	rm -rf runs $(STAMP) .setup.stamp

PY ?= python
PROTOS := $(wildcard proto/searchrl/proto/*.proto)

.PHONY: setup proto test test-slow lint up demo bench clean

setup:  ## install the project with the CPU engines and dev tools
	bash scripts/install-cpu.sh

proto:  ## regenerate searchrl/proto/*_pb2*.py from proto/ (never edit the output)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)

test:
	$(PY) -m pytest -q

test-slow:
	$(PY) -m pytest -q -m slow

lint:
	ruff check . && ruff format --check .

up:
	searchrl up -c configs/tiny.yaml --steps 3

bench:
	$(PY) bench/reward_throughput.py
	$(PY) bench/weight_sync.py

# megapod: two commands on a fresh Debian machine.
#   make demo   installs what it needs, then runs the pipeline locally on a tiny model
#   make test   installs what it needs, then runs the whole test suite
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/.tools/go/bin:$(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test bootstrap-demo bootstrap-test lint render golden clean cluster cluster-down

bootstrap-demo:
	@scripts/bootstrap.sh demo

bootstrap-test:
	@scripts/bootstrap.sh test

demo: bootstrap-demo
	@scripts/demo.sh

test: bootstrap-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -ra -p no:cacheprovider $(PYTEST_ARGS)

lint: bootstrap-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Regenerate the golden YAML under tests/golden (review the diff before committing).
golden: bootstrap-test
	MEGAPOD_REGENERATE_GOLDEN=1 $(BIN)/python -m pytest -q -p no:cacheprovider -k golden

render: bootstrap-demo
	$(BIN)/megapod render workflows/examples/llama-3.1-405b-p5.yaml --out out/llama-405b

# A real control plane on 127.0.0.1 (scripts/cluster/cluster.py): built from the Go module proxy
# into .tools/cluster/ on first use, then started; prints the kubeconfig and the Argo Server address.
cluster: bootstrap-test
	@$(BIN)/python scripts/cluster/cluster.py up

# Stops every process `make cluster` started (by pid) and removes its folder.
cluster-down:
	@$(BIN)/python scripts/cluster/cluster.py down

clean:
	rm -rf out runs .pytest_cache

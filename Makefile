# `make demo` and `make test` work on a fresh machine with Python 3.11: both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/demo.yaml
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch first, pinned: a bare torch requirement would pull a multi-GB CUDA build on CPU hosts.
# DS_BUILD_OPS=0: DeepSpeed builds no ops at install; the ones we use are plain PyTorch.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: setup
	$(BIN)/vid2vid demo --config $(CONFIG)

test: setup
	$(BIN)/pytest

bench: setup
	$(BIN)/python benchmarks/decode.py

clean:
	rm -rf $(VENV) runs data checkpoints out mlflow.db mlruns

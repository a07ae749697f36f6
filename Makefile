# hardbatch developer commands. Everything runs inside .venv in the repo root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-slow mutation lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# constraints.txt pins the CPU torch build so no multi-GB CUDA wheels are pulled.
	$(BIN)/pip install -c constraints.txt -e ".[dev,all]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/hardbatch demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Every hypothesis property with the "slow" profile (>= 200 examples each, no per-test CI caps).
PROPERTY_TESTS := tests/samplers/test_sampler_properties.py tests/samplers/test_nodup_duplicates.py \
	tests/samplers/test_b3_sampler.py tests/graph/test_partition.py tests/graph/test_rank_window.py \
	tests/mining/test_plan.py tests/losses/test_triton_interpret.py tests/graph/test_knn_key_blocks.py \
	tests/graph/test_threshold_key_blocks.py tests/graph/test_budget.py
test-slow: $(STAMP)
	HYPOTHESIS_PROFILE=slow $(BIN)/python -m pytest -q -m "not distributed" $(PROPERTY_TESTS)

# Mutation testing of the core modules (mutmut, ~30 min on 2 cores); report: benchmarks/results/mutation.md.
mutation: $(STAMP)
	$(BIN)/python benchmarks/mutation.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/lint-imports  # the layer contracts of docs/architecture.md (also run by make test)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache

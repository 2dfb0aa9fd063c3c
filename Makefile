# One command each on a fresh machine: `make fit`, `make test`. Both install first (skipped when up to date).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# The torch build pip installs first; for a CUDA build give e.g. TORCH="torch torchvision --index-url URL"
TORCH ?= torch==2.14.1 torchvision==0.29.1
CONFIG ?= configs/fast_vin.yaml
# Where EMNIST is looked for: an optional local copy beside the checkout, else ./data (downloaded on first use)
DATA_ROOT ?= $(if $(wildcard ../shared/data/emnist-sample),../shared/data/emnist-sample,data)
ARGS ?=
PYTEST_ARGS ?=
# The browser tests' extra (Playwright) where a Chromium is installed, so `make test` runs them there
EXTRAS ?= dev,export$(if $(shell command -v chromium),$(comma)browser)
comma := ,

.PHONY: help install fit validate test test-fast lr-find tensorboard bench bench-predict bench-read lint format clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## create .venv and install the project with its dev and export extras (browser too where Chromium is)

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

fit: install ## train, validate and test CONFIG (default configs/fast_vin.yaml) on DATA_ROOT
	$(BIN)/python -m emnist_lit fit --config $(CONFIG) --data.root $(DATA_ROOT) $(ARGS)

validate: install ## validate CONFIG (ARGS="--ckpt_path X")
	$(BIN)/python -m emnist_lit validate --config $(CONFIG) --data.root $(DATA_ROOT) $(ARGS)

lr-find: install ## LR range test of CONFIG; writes CONFIG's .lr.yaml copy with the suggestion
	$(BIN)/python -m emnist_lit lr_find --config $(CONFIG) --data.root $(DATA_ROOT) \
		--output_config $(basename $(CONFIG)).lr.yaml $(ARGS)

test: install ## the whole test suite (slow resume, SIGTERM and DDP tests too), then lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(BIN)/ruff check emnist_lit tests scripts
	$(BIN)/ruff format --check emnist_lit tests scripts

test-fast: install ## the suite without the slow tests
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

tensorboard: install ## TensorBoard over logs/
	$(BIN)/tensorboard --logdir logs

bench: install ## training images/s: a per-sample PIL data path against the batched one
	$(BIN)/python scripts/benchmark.py --data-root $(DATA_ROOT) $(ARGS)

bench-predict: install ## predict images/s: batched against one image at a time, on 2,000 PNGs
	$(BIN)/python scripts/bench_predict.py --data-root $(DATA_ROOT) $(ARGS)

bench-read: install ## read 210 generated VIN photos: exact VIN, silently wrong, statuses, photos/s (CKPT=...)
	$(BIN)/python scripts/bench_read.py --data-root $(DATA_ROOT) \
		$(if $(filter command line environment,$(origin CKPT)),--ckpt-path $(CKPT)) $(ARGS)

lint: install ## ruff check and format check
	$(BIN)/ruff check emnist_lit tests scripts
	$(BIN)/ruff format --check emnist_lit tests scripts

format: install ## ruff fix and format
	$(BIN)/ruff check --fix emnist_lit tests scripts
	$(BIN)/ruff format emnist_lit tests scripts

clean: ## remove logs and caches (not .venv)
	rm -rf logs lightning_logs .pytest_cache .ruff_cache **/__pycache__ *.egg-info

# The demo page (draw or upload a character, see the top-3) at http://127.0.0.1:7860/; CKPT defaults to the best
# checkpoint of the newest `make fit` run. ARGS="--port 8000" for another port.
CKPT ?= $(shell ls -t logs/*/version_*/checkpoints/epoch*.ckpt 2>/dev/null | head -n 1)
CHROMIUM ?= $(or $(shell command -v chromium),/usr/bin/chromium)
.PHONY: demo test-browser

demo: install ## the demo page for CKPT (default: the newest make fit checkpoint) at http://127.0.0.1:7860/
	@test -n "$(CKPT)" || { echo "no checkpoint: run make fit first, or make demo CKPT=path/to/file.ckpt"; exit 2; }
	$(BIN)/python -c "import starlette, uvicorn" 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[demo]"
	$(BIN)/python -m emnist_lit serve --ckpt_path $(CKPT) $(ARGS)

# The demo page in a real headless Chromium; installs Chromium (Debian's package, as root) and Playwright first
test-browser: install ## the demo page's tests in headless Chromium (installs Chromium and Playwright first)
	@test -x $(CHROMIUM) || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq chromium; \
		else echo "no Chromium at $(CHROMIUM): install it (sudo apt-get install chromium) or pass CHROMIUM=PATH"; exit 2; fi; }
	$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[dev,export,browser]"
	CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -m browser tests/test_demo_browser.py

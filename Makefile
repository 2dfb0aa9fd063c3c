# One command each on a fresh machine: `make fit`, `make test`. Both install first (skipped when up to date).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# torch from the local wheel cache of this workplace; override for another CUDA/CPU build, e.g. TORCH="torch torchvision"
TORCH ?= torch==2.14.1 torchvision==0.29.1
CONFIG ?= configs/fast_vin.yaml
# The real EMNIST sample when it sits beside the checkout, else ./data (downloaded with --data.download true)
DATA_ROOT ?= $(if $(wildcard ../shared/data/emnist-sample),../shared/data/emnist-sample,data)
ARGS ?=
PYTEST_ARGS ?= -m "not slow"

.PHONY: install fit validate test test-all lr-find tensorboard bench bench-predict lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev,export]"
	touch $@

fit: install
	$(BIN)/python -m emnist_lit fit --config $(CONFIG) --data.root $(DATA_ROOT) $(ARGS)

validate: install
	$(BIN)/python -m emnist_lit validate --config $(CONFIG) --data.root $(DATA_ROOT) $(ARGS)

lr-find: install
	$(BIN)/python -m emnist_lit lr_find --config $(CONFIG) --data.root $(DATA_ROOT) \
		--output_config $(basename $(CONFIG)).lr.yaml $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: PYTEST_ARGS =
test-all: test

tensorboard: install
	$(BIN)/tensorboard --logdir logs

# Training images/s of the reference's PIL data path against this project's batched one (< 5 min on 2 CPU cores)
bench: install
	$(BIN)/python scripts/benchmark.py --data-root $(DATA_ROOT) $(ARGS)

# Images/s of batched predict against a one-image-at-a-time loop on 2,000 PNGs
bench-predict: install
	$(BIN)/python scripts/bench_predict.py --data-root $(DATA_ROOT) $(ARGS)

lint: install
	$(BIN)/ruff check emnist_lit tests scripts
	$(BIN)/ruff format --check emnist_lit tests scripts

format: install
	$(BIN)/ruff check --fix emnist_lit tests scripts
	$(BIN)/ruff format emnist_lit tests scripts

clean:
	rm -rf logs lightning_logs .pytest_cache .ruff_cache **/__pycache__ *.egg-info

# The demo page (draw or upload a character, see the top-3) at http://127.0.0.1:7860/; CKPT defaults to the best
# checkpoint of the newest `make fit` run. ARGS="--port 8000" for another port.
CKPT ?= $(shell ls -t logs/*/version_*/checkpoints/epoch*.ckpt 2>/dev/null | head -n 1)
CHROMIUM ?= $(or $(shell command -v chromium),/usr/bin/chromium)
.PHONY: demo test-browser

demo: install
	@test -n "$(CKPT)" || { echo "no checkpoint: run make fit first, or make demo CKPT=path/to/file.ckpt"; exit 2; }
	$(BIN)/python -c "import starlette, uvicorn" 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[demo]"
	$(BIN)/python -m emnist_lit serve --ckpt_path $(CKPT) $(ARGS)

# The demo page in a real headless Chromium; installs Chromium (Debian's package, as root) and Playwright first
test-browser: install
	@test -x $(CHROMIUM) || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq chromium; \
		else echo "no Chromium at $(CHROMIUM): install it (sudo apt-get install chromium) or pass CHROMIUM=PATH"; exit 2; fi; }
	$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[dev,export,browser]"
	CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -m browser tests/test_demo_browser.py

# The two commands a new user runs: `make run` and `make test`. Every install step lives here.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# Re-install whenever pyproject.toml changes (the stamp's name carries its hash). Serving alone
# (`make run`) installs the serve extra; everything else (`make test`) installs every extra.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml client/pyproject.toml docker/requirements-*.txt | sha1sum | cut -c1-12)
SERVE_STAMP := $(VENV)/.serve-$(shell cat pyproject.toml client/pyproject.toml docker/requirements-serve.txt | sha1sum | cut -c1-12)

CONFIG ?= configs/default.yaml
OUT    ?= runs/train
CKPT   ?= models/default
BUNDLE ?= bundles/$(notdir $(CKPT))
METHOD ?= simclr
ENGINE ?= docker
SEEDS  ?= 0,1,2
JOBS   ?= 1

.DEFAULT_GOAL := help
.PHONY: help setup run serve evaluate-default lock test test-py312 test-py313 test-images images lint format train train-default evaluate export export-default verify profile compare bench clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# The lock files the images install also constrain .venv, so tests run the images' versions:
# their pins alone (pip takes no hashes in constraints beside an editable install).
LOCKS := docker/requirements-serve.txt docker/requirements-train.txt
PINS  := $(VENV)/pins-serve.txt $(VENV)/pins-train.txt

$(VENV)/pins-%.txt: docker/requirements-%.txt
	@mkdir -p $(VENV)
	@sed -n 's/^\([A-Za-z0-9_.-]*==[^ ]*\).*/\1/p' $< > $@

# Serving needs no torch, no training data and no dev tools: onnxruntime, FAISS, FastAPI, Pillow.
$(SERVE_STAMP): pyproject.toml client/pyproject.toml $(VENV)/pins-serve.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[serve]" \
		-e "./client[images,progress]" -c $(VENV)/pins-serve.txt
	@rm -f $(VENV)/.serve-*
	@touch $@

$(STAMP): pyproject.toml client/pyproject.toml $(PINS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[train,export,serve,parquet,test,dev]" \
		-e "./client[images,progress]" $(addprefix -c ,$(PINS))
	@rm -f $(VENV)/.installed-*
	@touch $@

# The tests validate docker-compose.yml with a real compose implementation (no engine needed).
$(VENV)/.compose: | $(STAMP)
	@if ! command -v docker-compose >/dev/null && ! docker compose version >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian's docker-compose (validates the compose file)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; \
		else \
			echo "error: need docker-compose or 'docker compose' (e.g. apt-get install docker-compose)" >&2; exit 1; \
		fi; \
	fi
	@touch $@

# The container tests build and run the images with Podman (no Docker engine needed) on a base
# image made from Debian packages with debootstrap; Podman keeps its image layers between runs.
$(VENV)/.podman: | $(STAMP)
	@if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing podman and debootstrap (the container tests)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman debootstrap >/dev/null; \
		else \
			echo "note: no podman/debootstrap and no root to install them: tests/images will be skipped" >&2; \
		fi; \
	fi
	@if [ "$$(id -u)" = 0 ] && [ -d /etc/containers ] && [ ! -f /etc/containers/containers.conf.d/sdssl.conf ]; then \
		mkdir -p /etc/containers/containers.conf.d; \
		printf '[containers]\ndefault_ulimits = []\n' > /etc/containers/containers.conf.d/sdssl.conf; \
	fi
	@touch $@

# The demo page's browser test drives Debian's headless chromium through its chromedriver.
$(VENV)/.chromium: | $(STAMP)
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing chromium and chromium-driver (the demo page's browser test)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
		else \
			echo "note: no chromium/chromedriver and no root to install them: tests/demo will be skipped" >&2; \
		fi; \
	fi
	@touch $@

setup: $(STAMP) $(VENV)/.compose $(VENV)/.podman $(VENV)/.chromium ## create .venv and install everything (idempotent)

DEFAULT_BUNDLE := bundles/default
DATA_DIR ?= artifacts/data
GALLERY  := artifacts/demo/mnist-test
HOST ?= 127.0.0.1
PORT ?= 8000

# bundles/default is committed (one copy of the weights: about 8 MB), so serving needs no
# export; `make export-default` rebuilds it after a change to models/default or export/.
$(GALLERY)/.complete: data/mnist5k-test.npz | $(SERVE_STAMP)
	$(BIN)/python scripts/demo_gallery.py $(GALLERY)

run: $(SERVE_STAMP) $(GALLERY)/.complete ## serve the default model with the mnist demo gallery on http://127.0.0.1:8000
	$(BIN)/sdssl-reindex $(DEFAULT_BUNDLE) $(GALLERY) --data-dir $(DATA_DIR) --if-empty
	@echo
	@echo "  SDSSL embedding service: http://$(HOST):$(PORT)   (API docs: http://$(HOST):$(PORT)/docs)"
	@echo "  demo page:               http://$(HOST):$(PORT)/demo/"
	@echo "  try, once /readyz answers:"
	@echo "    curl -F images=@$(GALLERY)/7/mnist-test-00700.png 'http://$(HOST):$(PORT)/v1/embeddings?budget_ms=20'"
	@echo "    curl -F image=@$(GALLERY)/7/mnist-test-00700.png -F k=5 http://$(HOST):$(PORT)/v1/search"
	@echo
	$(BIN)/sdssl-serve --bundle $(DEFAULT_BUNDLE) --data-dir $(DATA_DIR) --host $(HOST) --port $(PORT)

serve: $(SERVE_STAMP) ## serve BUNDLE (default: the default bundle) with DATA_DIR
	$(BIN)/sdssl-serve --bundle $(BUNDLE) --data-dir $(DATA_DIR) --host $(HOST) --port $(PORT)

evaluate-default: $(STAMP) ## per-depth table of the committed default model (k-NN + linear probe)
	$(BIN)/python -m training evaluate models/default --output artifacts/default-eval

test: setup ## install, then run the whole test suite (the container tests included)
	$(BIN)/python -m pytest

# Python 3.12 and 3.13 run the service and client tests without torch (`make test-py312`,
# `make test-py313`): the tiny bundles they serve are exported by .venv (3.11, the training
# stack) and handed over in SDSSL_TEST_BUNDLES; each interpreter gets its own .venv3NN.
TEST_BUNDLES := artifacts/test-bundles-$(shell cat configs/tiny.yaml training/*.py export/*.py export/bridges/*.py tests/bundles.py | sha1sum | cut -c1-12)

test-py312: ## the service, client and hostile tests under Python 3.12 (where one is installed)
test-py313: ## the same under Python 3.13
test-py312 test-py313: test-py3%: $(STAMP)
	@py=$$(for c in python3.$* "$$(pyenv root 2>/dev/null)"/versions/3.$*.*/bin/python3.$*; do \
		"$$c" -V >/dev/null 2>&1 && { echo "$$c"; break; }; done); \
	if [ -z "$$py" ]; then \
		echo "test-py3$*: no Python 3.$* here (neither python3.$* nor a pyenv 3.$*): stopping"; exit 0; \
	fi; \
	set -ex; \
	test -x .venv3$*/bin/python || "$$py" -m venv .venv3$*; \
	.venv3$*/bin/python -m pip install --quiet --disable-pip-version-check \
		-e ".[serve,parquet,test]" -e "./client[images,progress]" -c $(VENV)/pins-serve.txt; \
	$(BIN)/python -m tests.bundles $(TEST_BUNDLES); \
	SDSSL_TEST_BUNDLES=$(abspath $(TEST_BUNDLES)) .venv3$*/bin/python -m pytest \
		tests/service tests/client tests/hostile

test-images: setup ## build the images with Podman and run the container and compose tests
	$(BIN)/python -m pytest tests/images

images: ## build the serving (cpu, gpu) and training images with docker (ENGINE=podman works too)
	$(ENGINE) build -f docker/serve.Dockerfile --target cpu -t sdssl-serve:cpu .
	$(ENGINE) build -f docker/serve.Dockerfile --target gpu -t sdssl-serve:gpu .
	$(ENGINE) build -f docker/train.Dockerfile -t sdssl-train:latest .

lint: $(STAMP) ## ruff, shellcheck, hadolint, and the images' pinned requirements
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/shellcheck -x scripts/*.sh scripts/common.bash bench/*.sh
	$(BIN)/hadolint docker/*.Dockerfile
	$(BIN)/python scripts/lock_requirements.py --check

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

train: $(STAMP) ## train CONFIG into OUT (make train CONFIG=configs/tiny.yaml OUT=runs/tiny)
	$(BIN)/python -m training train --config $(CONFIG) --out $(OUT)

train-default: $(STAMP) ## reproduce models/default (about an hour on 2 CPU cores)
	$(BIN)/python -m training train --config configs/default.yaml --set train.threads=1 --out runs/default
	$(BIN)/python -m training slim runs/default models/default

evaluate: $(STAMP) ## per-depth k-NN and linear top-1 of CKPT
	$(BIN)/python -m training evaluate $(CKPT)

export: $(STAMP) ## export CKPT to BUNDLE (default bundles/<name of CKPT>), replacing it, then verify
	@if [ "$(abspath $(BUNDLE))" = "$(abspath $(DEFAULT_BUNDLE))" ]; then \
		echo "error: BUNDLE is the committed $(DEFAULT_BUNDLE): name another (make export CKPT=runs/x BUNDLE=bundles/x), or rebuild it on purpose with make export-default" >&2; exit 2; \
	fi
	$(BIN)/python -m export $(CKPT) $(BUNDLE) --force
	$(BIN)/python -m export verify $(BUNDLE)

export-default: $(STAMP) ## rebuild the committed bundles/default from models/default (then commit it)
	$(BIN)/python -m export models/default $(DEFAULT_BUNDLE) --force
	$(BIN)/python -m export verify $(DEFAULT_BUNDLE)

verify: $(STAMP) ## verify BUNDLE (hashes, manifest, exits agree with all_exits)
	$(BIN)/python -m export verify $(BUNDLE)

profile: $(STAMP) ## onnxruntime latency per exit depth of BUNDLE at batch 1, 8, 32
	$(BIN)/python -m export profile $(BUNDLE) --plot artifacts/profile-$(notdir $(BUNDLE)).png

lock: $(STAMP) ## re-lock docker/requirements-*.txt from pyproject.toml (uv, with hashes)
	$(BIN)/python scripts/lock_requirements.py

compare: $(STAMP) ## baseline vs SDSSL for METHOD over SEEDS, JOBS runs at once (writes docs/results/)
	$(BIN)/python -m training compare --config configs/compare.yaml --method $(METHOD) --seeds $(SEEDS) --jobs $(JOBS)

# The server benchmark measures per-request overhead with wrk (a C load generator).
$(VENV)/.wrk: | $(STAMP)
	@if ! command -v wrk >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing wrk (bench.server_efficiency)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
		else \
			echo "note: no wrk and no root to install it: the overhead row of the bench is skipped" >&2; \
		fi; \
	fi
	@touch $@

bench: $(STAMP) $(VENV)/.wrk ## run every benchmark; writes bench/results/<date>-<machine>.md
	$(BIN)/python -m bench.report

clean: ## remove caches and run outputs (keeps .venv and models/)
	rm -rf .pytest_cache .ruff_cache artifacts runs

# DigitDraw: the two commands in the README are `make run` and `make test`.
# Everything runs from the virtual environment .venv at the repository root.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# `make run` settings (the same names as the CLI flags' environment variables)
MODEL_URI ?= model-store
FEEDBACK_URI ?= feedback-store
TRAIN_DATA ?= bundled
HOST ?= 127.0.0.1
PORT ?= 8080
# `make retrain`: a short fine-tune from the model LATEST names (docs/training.md: "Retraining").
RETRAIN_EPOCHS ?= 2
# It trusts every correction not rejected: `make run` serves on 127.0.0.1, so you are the only
# writer. Serving on another address, run `make retrain FEEDBACK_TRUST=approved` and review first.
FEEDBACK_TRUST ?= all

# `make review`: the review page (training/review) on REVIEW_HOST:REVIEW_PORT over FEEDBACK_URI.
REVIEW_HOST ?= 127.0.0.1
REVIEW_PORT ?= 8090
# axe-core for the accessibility audits, at the version tests/package-lock.json pins.
AXE := tests/node_modules/axe-core/axe.min.js

.PHONY: setup gl browser run train retrain serve review test unit validate bench clean

setup: $(STAMP) gl

# Skia, which renders the pen digits for training (training/render.py), loads libEGL and
# libGL: Debian's libegl1 and libgl1, installed here when run as root (as in CI).
gl:
	@if ! /sbin/ldconfig -p | grep -q 'libEGL.so.1 ' || ! /sbin/ldconfig -p | grep -q 'libGL.so.1 '; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get install -y --no-install-recommends libegl1 libgl1 \
	    || (apt-get update && apt-get install -y --no-install-recommends libegl1 libgl1); \
	  else \
	    echo "error: training renders pen digits with Skia, which needs libEGL and libGL: sudo apt-get install libegl1 libgl1" >&2; \
	    exit 1; \
	  fi; \
	fi

$(STAMP): requirements.txt training/requirements.txt service/requirements.txt tests/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# Debian's Chromium for the browser tests, shellcheck for the infra scripts, npm for axe-core
# (needs root, as in CI).
browser:
	@if [ ! -x /usr/bin/chromium ] || ! command -v shellcheck >/dev/null || ! command -v npm >/dev/null; then \
	  apt-get install -y --no-install-recommends chromium chromium-driver shellcheck npm \
	  || (apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver shellcheck npm); \
	fi

$(AXE): tests/package.json tests/package-lock.json
	cd tests && npm ci --no-audit --no-fund
	touch $@

# Train on the bundled data if the store has no model yet, then serve the app.
run: setup
	@if [ ! -e "$(MODEL_URI)/models/LATEST" ] && case "$(MODEL_URI)" in gs://*) false;; *) true;; esac; then \
	  echo "no model in $(MODEL_URI): training one on $(TRAIN_DATA) data first"; \
	  TRAIN_DATA=$(TRAIN_DATA) PUBLISH_URIS=$(MODEL_URI) $(PY) -m training; \
	fi
	@echo "serving DigitDraw on http://$(HOST):$(PORT)/ (corrections go to $(FEEDBACK_URI))"
	MODEL_URI=$(MODEL_URI) FEEDBACK_URI=$(FEEDBACK_URI) HOST=$(HOST) PORT=$(PORT) $(PY) -m service

train: setup
	PUBLISH_URIS=$(MODEL_URI) $(PY) -m training

# Fine-tune on the corrections people sent through the page; a running `make run` serves
# the new model within MODEL_POLL_SECONDS if it wins against the one serving.
retrain: setup
	TRAIN_DATA=$(TRAIN_DATA) FEEDBACK_URI=$(FEEDBACK_URI) FEEDBACK_TRUST=$(FEEDBACK_TRUST) INIT_FROM=latest \
	  EPOCHS=$(RETRAIN_EPOCHS) PUBLISH_URIS=$(MODEL_URI) $(PY) -m training

serve: setup
	MODEL_URI=$(MODEL_URI) FEEDBACK_URI=$(FEEDBACK_URI) HOST=$(HOST) PORT=$(PORT) $(PY) -m service

# Review and decide on the corrections in the browser: prints a one-time sign-in link.
review: setup
	FEEDBACK_URI=$(FEEDBACK_URI) REVIEW_HOST=$(REVIEW_HOST) REVIEW_PORT=$(REVIEW_PORT) $(PY) -m training.review

test: setup browser $(AXE)
	$(PY) -m pytest $(PYTEST_ARGS)

# The tests that need no Ray, server process, browser or GCS emulator: seconds, not minutes.
unit: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Validate the rendered manifests against a live cluster (kubectl apply --dry-run=server).
validate:
	infra/validate-live.sh

bench: setup browser
	$(PY) -m bench.train_bench
	$(PY) -m bench.serve_bench
	$(PY) -m bench.worst_case
	$(PY) -m bench.feedback_bench
	$(PY) -m bench.attack_bench
	$(PY) -m bench.backlog_bench
	$(PY) -m bench.handwriting_eval

clean:
	rm -rf $(VENV) runs .data .pytest_cache .hypothesis *.egg-info tests/node_modules

# One-command entry points. `make run` and `make test` do all set-up themselves (idempotent).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NLTK_STAMP := .nltk_data/corpora/wordnet/lexnames
export NLTK_DATA := $(CURDIR)/.nltk_data
export HF_HUB_OFFLINE := 1
export RAY_AUTH_MODE ?= token
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONPATH := $(CURDIR)

.PHONY: setup run test bench lint mlflow-ui cluster-up cluster-down clean

setup: $(STAMP) $(NLTK_STAMP)

$(STAMP): pyproject.toml
	@# A venv without pip (python3 -m venv fails half-way where Debian's python3-venv is missing) is rebuilt.
	@$(PY) -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV); python3 -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV); \
	  (apt-get update -qq && apt-get install -y -qq python3-venv) >/dev/null || { echo "python3 -m venv failed: install Debian package python3-venv"; exit 1; }; \
	  python3 -m venv $(VENV); }; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

$(NLTK_STAMP):
	@test -f /usr/share/wordnet/index.sense || { (apt-get update -qq && apt-get install -y -qq wordnet-base wordnet-sense-index) >/dev/null || { echo "install Debian package wordnet-base (or run: python -c \"import nltk; nltk.download('wordnet', '$(NLTK_DATA)')\")"; exit 1; }; }
	$(PY) -m components.diffaug.wordnet_data --target $(NLTK_DATA)

run: setup
	$(PY) pipelines/full.py $(ARGS)

test: setup
	$(PY) -m pytest -q tests $(ARGS)

bench: setup
	$(PY) -m benchmarks.run_all $(ARGS)

lint: setup
	$(VENV)/bin/ruff check components pipelines tuning tests benchmarks

mlflow-ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/runs/mlflow.db --host 127.0.0.1 --port 5000

cluster-up: setup
	bash cluster/up.sh $(ARGS)

cluster-down:
	bash cluster/down.sh $(ARGS)

clean:
	rm -rf runs/.cache .pytest_cache

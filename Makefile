# The two set-up commands of README.md: `make repro` and `make test`. Both work on a fresh
# machine: they create .venv, install torch from this disk's pinned release, then the package.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: repro test lint docs ui install clean-runs postgres chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test,docs]'
	touch $(STAMP)

install: $(STAMP)

repro: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro
	@echo "Results: reports/curves.md (dvc metrics show); plots: reports/plots/; MLflow: make ui"

test: lint docs postgres chromium
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q --durations=30

# The layers contract (pyproject.toml [tool.importlinter]: imports point down, no circles) and
# the linter; `make test` runs both first, so a layer break or a lint error fails CI.
lint: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check .

# The documentation site (mkdocs.yml, docs/) into site/: --strict fails on a broken link or
# anchor, a page left out of the nav, a snippet whose file is gone, or a docstring that
# mkdocstrings cannot render. `make test` builds it before the tests.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The tuning tests start a PostgreSQL server of their own (initdb, pg_ctl): install Debian's
# package when it is missing. Without it (no apt-get, no root) those tests skip and say why.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
	  echo "PostgreSQL could not be installed: its tests will be skipped"

# The site's rendering test opens the built pages in headless Chromium (driven by Playwright):
# install Debian's package when no Chromium is found; without it that test skips and says why.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "Chromium could not be installed: the site's rendering test will be skipped"

# The MLflow UI over the pipeline's store: `make ui PORT=5001` for another port. One web worker
# and no GenAI job runner (it starts a queue consumer and workers of its own): enough for one
# person on a 2-core machine.
PORT ?= 5000
ui: $(STAMP)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS=false \
	  $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db \
	  --port $(PORT) --workers 1

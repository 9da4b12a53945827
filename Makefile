# simrec: the two commands of the README, and the steps behind them.
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup setup-dev demo test test-fast lint format bench clean

setup:            ## virtualenv + pinned dependencies + Horovod + simrec (and Fashion-MNIST via apt)
	bash scripts/install.sh

setup-dev:        ## + test tools and Debian chromium (the app's browser test)
	bash scripts/install.sh --dev --browser

SERVE ?= 1

# The IKEA catalog: a local copy when there is one, else simrec downloads and verifies it.
LOCAL_IKEA ?= ../shared/data/ikea
IKEA_SOURCE := $(if $(wildcard $(LOCAL_IKEA)/images),--set catalog.source_dir=$(LOCAL_IKEA))

demo: setup       ## the main job end to end on the embedded defaults, then serve model + app
	$(BIN)/simrec pipeline $(IKEA_SOURCE)
	if [ "$(SERVE)" = 1 ]; then bash scripts/serve_demo.sh; fi

test: setup-dev   ## lint, then every test, slow ones included (what CI runs)
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup-dev
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup-dev
	$(BIN)/ruff check src tests bench notebooks
	$(BIN)/ruff format --check src tests bench notebooks

format: setup-dev
	$(BIN)/ruff format src tests bench notebooks
	$(BIN)/ruff check --fix src tests bench notebooks

bench: setup      ## regenerate bench/results.json and the README's results table
	$(BIN)/python -m bench.run

clean:
	rm -rf lakehouse mlflow.db mlruns artifacts

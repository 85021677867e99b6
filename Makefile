# runner's everyday commands. `make help` lists them; ARGS passes Hydra overrides, e.g.
#   make run ARGS="optimizer=adam trainer.epochs=5"
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run lr-find transfer-grid sweep test test-all test-slow lint bench tensorboard report results docs docs-serve screenshots clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,docs]'
	touch $@

install: $(VENV)/.installed  ## Create .venv and install runner with its dev and docs tools

run: install  ## Train the default experiment (CIFAR-10 under data/, or where RUNNER_DATA_DIR points); ARGS=overrides
	$(PY) -m runner $(ARGS)

lr-find: install  ## The learning-rate range test of a run's config: plot, CSV, suggested lr; ARGS=overrides
	$(PY) -m runner.lr_find $(ARGS)

sweep: install  ## A multirun sweep, e.g. make sweep ARGS="optimizer=sgd,momentum,adam seed=0,1,2"
	$(PY) -m runner -m $(ARGS)

test: install  ## The test suite (fast: no downloads, synthetic data; real-data checks when ../shared is there)
	$(PY) -m pytest $(ARGS)

test-all: install  ## The test suite including the slow tests
	$(PY) -m pytest -m "" $(ARGS)

test-slow: install  ## Only the tests marked slow (what `make test` leaves out; CI runs both)
	$(PY) -m pytest -m slow $(ARGS)

lint: install  ## ruff on the sources and tests
	$(VENV)/bin/ruff check src tests

bench: install  ## Speed benchmarks side by side (pipeline, overhead, start-up, the reference scripts, a sweep's fixed cost)
	$(PY) -m runner.bench $(ARGS)

transfer-grid: install  ## The lecture's 2x2 transfer grid in one command (results.md in its run dir); ARGS=overrides
	$(PY) -m runner.transfer_grid $(ARGS)

tensorboard: install  ## TensorBoard on every run under outputs/ (http://127.0.0.1:6006)
	$(VENV)/bin/tensorboard --logdir outputs --host 127.0.0.1

report: install  ## Ranked table and plots of a sweep: make report ARGS=outputs/multirun/<day>/<time>
	$(PY) -m runner.report $(ARGS)

results: install  ## The published numbers in docs/results and their status; ARGS=all regenerates what is missing or stale
	$(PY) -m runner.results $(ARGS)

docs: install  ## The documentation site into site/ (mkdocs build --strict: a broken link or page fails it)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: install  ## The documentation site on http://127.0.0.1:8000, rebuilt on every change
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

screenshots: install  ## Retake the docs' pictures of TensorBoard and the terminal (docs/images/; needs chromium and tmux)
	$(PY) -m pip install --quiet -e '.[screenshots]'
	$(PY) docs/screenshots.py $(ARGS)

clean:  ## Remove caches and build files of src/ and tests/ (keeps outputs/, data/ and .venv)
	rm -rf .pytest_cache .ruff_cache src/*.egg-info
	find src tests -name __pycache__ -prune -exec rm -rf {} +

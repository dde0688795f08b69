# Two commands for a new user: `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export HF_HUB_OFFLINE := 1

.PHONY: setup setup-paper weights demo test ui bench clean

# The embedded default needs no deep-learning framework; the paper's models (and the tests of
# their loading code) need the `paper` extra: torch, diffusers, transformers, open_clip.
setup: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml
setup-paper: $(VENV)/.installed-paper $(DAGSTER_HOME)/dagster.yaml

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found; run: make PYTHON=python3 ..."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(VENV)/.installed-paper: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev,paper]'
	touch $@

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	printf 'telemetry:\n  enabled: false\n' > $@

# IS-Net (the paper's DIS model) as ONNX, from the npm package @imgly/background-removal-data
# (AGPL-3.0). Without it segmentation falls back to GrabCut, loudly.
weights: setup
	$(BIN)/gen4gen fetch-weights || echo "WARNING: IS-Net weights unavailable; segmentation will use GrabCut"

demo: setup weights
	$(BIN)/gen4gen demo-data
	$(BIN)/gen4gen materialize

test: setup-paper weights
	$(BIN)/python -m pytest -q

ui: setup
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

bench: setup weights
	$(BIN)/python bench/bench_stages.py

clean:
	rm -rf data/build data/mycanvas data/reports $(DAGSTER_HOME)

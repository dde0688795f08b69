# Two commands for a new user: `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export HF_HUB_OFFLINE := 1
# `make demo PROFILE=paper` runs the paper's models (README: "The paper profile"). Without
# PROFILE, the environment variable GEN4GEN_PROFILE or the configuration's `profile` decides (default: embedded).
ifdef PROFILE
export GEN4GEN_PROFILE := $(PROFILE)
endif
# Limit of the Dagster concurrency pool `gpu` (segmentation, repainting, captioning steps): one
# step per GPU at a time. Defaults to the number of GPUs nvidia-smi lists (1 without any).
GPU_COUNT ?= $(shell n=$$(nvidia-smi -L 2>/dev/null | grep -c '^GPU'); [ "$${n:-0}" -gt 0 ] && echo $$n || echo 1)

.PHONY: setup setup-paper weights dvc-env dvc-setup demo test ui bench before-after bench-dvc bench-memory bench-publish bench-cluster bench-personalise ray-demo lock clean

# The embedded default needs no deep-learning framework; the paper's models (and the tests of
# their loading code) need the `paper` extra: torch, diffusers, transformers, open_clip.
# Both install the whole dependency tree from a lock with hashes (requirements/, `make lock`),
# then the project itself without dependencies: every machine gets the same files.
LOCK_DIR := requirements
# A pin changed in pyproject.toml but not in the lock shows up as an unmet requirement here.
LOCK_CHECK = @$(BIN)/pip check >/dev/null || { $(BIN)/pip check; echo "$(LOCK_DIR)/ does not match pyproject.toml: run make lock"; exit 1; }
setup: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml
setup-paper: $(VENV)/.installed-paper $(DAGSTER_HOME)/dagster.yaml

$(VENV)/.installed: $(LOCK_DIR)/base.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found; run: make PYTHON=python3 ..."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK_DIR)/base.txt
	$(BIN)/pip install --quiet --no-deps -e .
	$(LOCK_CHECK)
	touch $@

$(VENV)/.installed-paper: $(VENV)/.installed $(LOCK_DIR)/paper.txt
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK_DIR)/paper.txt
	$(LOCK_CHECK)
	touch $@

# Rewrites the locks from pyproject.toml's pins and requirements/dvc.in with pip-tools, through
# this machine's pip configuration (its index, so the hashes are those pip will check). Existing
# pins are kept where they still fit; `make lock UPGRADE=1` moves every unpinned package to its
# newest version. paper.txt (the paper's models and Ray) is resolved first and seeds base.txt, so both agree on shared packages.
# setuptools is pinned too (--allow-unsafe): torch requires it, and --require-hashes needs every package.
LOCK_TOOLS := .tmp-lock-tools
PIP_TOOLS_VERSION := 7.6.2
PIP_COMPILE = CUSTOM_COMPILE_COMMAND='make lock' $(LOCK_TOOLS)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
	--no-emit-find-links --no-emit-options $(if $(UPGRADE),--upgrade)
lock: $(LOCK_TOOLS)/.installed-$(PIP_TOOLS_VERSION)
	$(PIP_COMPILE) --extra dev --extra paper --extra cluster -o $(LOCK_DIR)/paper.txt pyproject.toml
	cp $(LOCK_DIR)/paper.txt $(LOCK_DIR)/base.txt
	$(PIP_COMPILE) --extra dev -o $(LOCK_DIR)/base.txt pyproject.toml
	$(PIP_COMPILE) -o $(LOCK_DIR)/dvc.txt $(LOCK_DIR)/dvc.in

$(LOCK_TOOLS)/.installed-$(PIP_TOOLS_VERSION):
	$(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/pip install --quiet 'pip-tools==$(PIP_TOOLS_VERSION)'
	touch $@

# Rewritten when this Makefile changes. Pools: steps of assets with pool="gpu" wait for a free
# slot (op granularity); `dagster instance concurrency set gpu N` changes the limit afterwards.
$(DAGSTER_HOME)/dagster.yaml: Makefile
	mkdir -p $(DAGSTER_HOME)
	printf 'telemetry:\n  enabled: false\nconcurrency:\n  pools:\n    default_limit: %s\n    granularity: op\n' $(GPU_COUNT) > $@

# IS-Net (the paper's DIS model) as ONNX, from the npm package @imgly/background-removal-data
# (AGPL-3.0). Without it segmentation falls back to GrabCut, loudly.
weights: setup
	$(BIN)/gen4gen fetch-weights || echo "WARNING: IS-Net weights unavailable; segmentation will use GrabCut"

# DVC (versions of the data; README: "Versions of the data (DVC)") lives in its own environment:
# its dependencies (hydra-core's antlr4 pin) break Dagster's asset selection when both share one.
# Its version is the pin in requirements/dvc.in. `make dvc-setup DVC_EXTRAS=s3,gs` adds remote
# plugins (dvc-s3, dvc-gs, ...), which the lock does not cover: they are installed by name.
DVC_VENV := .venv-dvc
DVC_VERSION := $(shell sed -n 's/^dvc==//p' $(LOCK_DIR)/dvc.in)
DVC_EXTRAS ?=
comma := ,
DVC_STAMP := $(DVC_VENV)/.installed-$(DVC_VERSION)$(if $(DVC_EXTRAS),-$(subst $(comma),-,$(DVC_EXTRAS)))
dvc-env: $(DVC_STAMP)

$(DVC_STAMP): $(LOCK_DIR)/dvc.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found; run: make PYTHON=python3 ..."; exit 1; }
	$(PYTHON) -m venv $(DVC_VENV)
	$(DVC_VENV)/bin/pip install --quiet --require-hashes -r $(LOCK_DIR)/dvc.txt
	$(if $(DVC_EXTRAS),$(DVC_VENV)/bin/pip install --quiet 'dvc[$(DVC_EXTRAS)]==$(DVC_VERSION)')
	touch $@

# The DVC repository is the checkout (.dvc/ and dvc.yaml are tracked); this writes the machine's
# settings (hard-linked cache) to .dvc/config.local and a default local remote, .dvc-remote/,
# unless a remote is configured.
dvc-setup: setup dvc-env
	$(BIN)/gen4gen dvc setup

# The paper profile needs the `paper` extra (torch, diffusers, transformers), not the ONNX
# weights; `gen4gen check-weights` stops before any run (exit 3) when a model's weights are missing.
DEMO_SETUP := $(if $(filter paper,$(GEN4GEN_PROFILE)),setup-paper,setup weights)
demo: $(DEMO_SETUP)
	$(BIN)/gen4gen check-weights
	$(MAKE) dvc-setup || echo "WARNING: DVC is not set up; the data will not be versioned (make dvc-setup)"
	$(BIN)/gen4gen demo-data
	$(BIN)/gen4gen materialize

test: setup-paper weights dvc-env
	$(BIN)/python -m pytest -q

ui: setup
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

bench: setup weights
	$(BIN)/python bench/bench_stages.py

# Peak memory (RSS) of `make demo`'s materialisation, whole process tree (--help for options).
# The README's before/after pair: one demo image composed the old way and the current way.
before-after: setup weights
	$(BIN)/python -m gen4gen.before_after --out docs/before_after.jpg

bench-memory: setup weights
	$(BIN)/python bench/bench_memory.py

# Committing 10,000 1024² PNGs to DVC (about 20 GB of scratch space under /tmp; --help for options).
# Publishing after each of 10 concepts added to a 20-concept dataset (README: "Publishing costs what changed").
bench-publish: setup weights
	$(BIN)/python bench/bench_publish.py

# The demo pipeline on a two-node Ray cluster with fake GPUs and the instance in Postgres, in a network
# namespace of its own (loopback only; README: "Scaling out"); as a user, through a user namespace.
ray-demo: setup-paper
	unshare $$([ "$$(id -u)" = 0 ] || echo -r) -n sh -c 'ip link set lo up && exec $(BIN)/python -m tests.ray_demo'

# Repainting over 1, 2 and 4 Ray workers on fake GPUs, a device-bound stand-in (README: "Scaling out").
bench-cluster: setup-paper
	$(BIN)/python bench/bench_cluster.py

# `gen4gen personalise --tiny` on the demo dataset (after `make demo`): wall time, training figures, the comparison.
bench-personalise: setup-paper
	$(BIN)/python bench/bench_personalise.py

bench-dvc: setup dvc-env
	$(BIN)/python bench/bench_dvc.py

clean:
	rm -rf data/build data/mycanvas data/reports $(DAGSTER_HOME)

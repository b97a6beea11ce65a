# Two commands on a fresh machine: `make reproduce` (the whole pipeline) and `make test`.
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet
RUN    := PATH="$(CURDIR)/$(BIN):$$PATH"

.PHONY: setup reproduce study test lint format bench gpu-check lab clean-venv

# One stamp per install: the pipeline's packages, then the test or lab extras on top.
$(VENV)/.stamp-base: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(PIP) --upgrade pip 2>&1 | grep -v 'is ignored' || true
	$(PIP) -e . 2>&1 | grep -v 'is ignored' || true
	$(BIN)/python -c 'import avguide, torch, torchaudio'
	touch $@

$(VENV)/.stamp-%: $(VENV)/.stamp-base
	$(PIP) -e '.[$*]' 2>&1 | grep -v 'is ignored' || true
	touch $@

setup: $(VENV)/.stamp-base

# `make reproduce PROFILE=vocaset` (biwi, smoke): params.yaml := the default + profiles/PROFILE.yaml,
# checked first (every key known, every outside path it names exists); `git checkout params.yaml` goes back.
PROFILE ?= default
# Stages run side by side, LANES at a time (avguide.reproduce); each computes with params' `threads`.
LANES ?= 2

reproduce: setup
	$(BIN)/python -m avguide.params compose $(PROFILE)
	$(RUN) $(BIN)/python -m avguide.reproduce --lanes $(LANES)

# The loss-setting study on the default pipeline's models (avguide.study): resumable; results/study/ is kept in git.
study: reproduce
	$(RUN) $(BIN)/python -m avguide.study --lanes $(LANES)

test: $(VENV)/.stamp-test
	$(BIN)/python -m pytest --nbval-lax -p no:cacheprovider

lint: $(VENV)/.stamp-test
	$(BIN)/ruff format --check lib tests benchmarks notebooks
	$(BIN)/ruff check lib tests benchmarks notebooks

format: $(VENV)/.stamp-test
	$(BIN)/ruff format lib tests benchmarks notebooks
	$(BIN)/ruff check --fix lib tests benchmarks notebooks

# Each benchmark prints one JSON line of figures with its provenance.
bench: setup
	for script in benchmarks/*.py; do $(BIN)/python $$script || exit 1; done

# The CUDA path measured (benchmarks/gpu.py, docs/benchmarks.md): with this venv's python when there is one, else
# the python3 on PATH (a plain CUDA environment: torch, torchaudio, transformers, safetensors; nothing installed).
# Without CUDA it says so and exits 0. GPU_ARGS: e.g. --steps 20, or --device cpu --quick.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	PYTHONPATH=lib $(GPU_PYTHON) benchmarks/gpu.py $(GPU_ARGS)

lab: $(VENV)/.stamp-lab
	$(BIN)/jupyter lab notebooks

clean-venv:
	rm -rf $(VENV)

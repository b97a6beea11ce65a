# Two commands on a fresh machine: `make reproduce` (the whole pipeline) and `make test`.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup reproduce test lab bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 2>&1 | grep -v 'is ignored' || true
	$(BIN)/python -m pip install --quiet -e . 2>&1 | grep -v 'is ignored' || true
	$(BIN)/python -c 'import avguide, torch, torchaudio'
	touch $(STAMP)

setup: $(STAMP)

reproduce: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest --nbval-lax -p no:cacheprovider

lab: setup
	$(BIN)/jupyter lab notebooks

clean-venv:
	rm -rf $(VENV)

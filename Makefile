# Two commands on a fresh machine: `make reproduce` (the whole pipeline) and `make test`.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup reproduce ablation test lab bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 2>&1 | grep -v 'is ignored' || true
	$(BIN)/python -m pip install --quiet -e . 2>&1 | grep -v 'is ignored' || true
	$(BIN)/python -c 'import avguide, torch, torchaudio'
	touch $(STAMP)

setup: $(STAMP)

reproduce: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# FaceFormer's loss ablation (mse, mse+rlv, mse+av, avguide) over three seeds, on top of `make reproduce`'s
# baselines and expert: a DVC experiment with those parameters set (see README, "AV-guided training").
ablation: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc exp run -S 'train.animators=[faceformer]' \
		-S 'guide.losses=[mse,mse+rlv,mse+av,avguide]' -S 'guide.seeds=[0,1,2]'

test: setup
	$(BIN)/python -m pytest --nbval-lax -p no:cacheprovider

lab: setup
	$(BIN)/jupyter lab notebooks

clean-venv:
	rm -rf $(VENV)

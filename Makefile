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

# `make reproduce PARAMS=params.vocaset.yaml` (or params.biwi.yaml): the paper's settings on a GPU. The file is
# checked first (same keys as every profile, the dataset folders it names exist), then copied over params.yaml,
# the one file DVC reads (`git checkout params.yaml` brings the default profile back).
PARAMS ?= params.yaml

reproduce: setup
ifneq ($(PARAMS),params.yaml)
	$(BIN)/python -m avguide.params check $(PARAMS)
	cp $(PARAMS) params.yaml
	@echo "params.yaml is now $(PARAMS); git checkout params.yaml restores the default profile"
endif
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

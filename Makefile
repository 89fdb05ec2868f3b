PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run ablation test lint install bench clean

# Create the virtual environment and install the project (torch first: pip takes it from disk).
# setuptools warns on every editable install that a folder named like a package could shadow it
# (true of any checkout): PYTHONWARNINGS=ignore keeps that wall off the console.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/refseg run-local

# Table 4 as one pipeline run: every ablation row on small3_os8 for one language, e.g.
# make ablation ABLATION_LANG=zh STEPS=300 SEEDS=0,1,2 (0 steps = the preset's own number).
ABLATION_LANG ?= en
STEPS ?= 0
SEEDS ?= 0
ablation: $(STAMP)
	$(BIN)/refseg ablation --lang $(ABLATION_LANG) --steps $(STEPS) --seeds $(SEEDS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check model components pipelines configs tests benchmarks

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) runs .pytest_cache

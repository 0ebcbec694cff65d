# Two commands for a fresh machine:
#   make demo   train a controller in the shipped Doom dream, score it in real VizDoom (runs/demo/)
#   make test   lint and format check, run the tests, build the docs site strictly (a warning fails it)
# Both create .venv first. torch is pinned and installed before the package,
# so pip takes the CPU wheel instead of resolving a multi-GB CUDA build.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dreamgym-installed

.PHONY: venv test demo

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[all]'
	touch $@

test: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

demo: venv
	$(BIN)/python -m dreamgym.demo --out runs/demo

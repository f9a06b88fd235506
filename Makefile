# `make demo` and `make test` work on a fresh machine: they create .venv and install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml setup.py
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/semper demo

# Two processes (pytest-xdist), a test file each at a time, so that a file's module-scoped
# markets and agents are made once; SEMPER_TEST_WORKERS=0 runs the suite in one process.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $${SEMPER_TEST_WORKERS:-2} --dist loadfile

bench: $(STAMP)
	$(BIN)/python bench/channel.py
	$(BIN)/python bench/payments.py
	$(BIN)/python bench/hardening.py

# ruff on everything, then mypy --strict on transport/ and services/ ([tool.mypy]).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info

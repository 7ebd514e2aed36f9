# The two set-up commands of README: `make demo` and `make test`.
# Each creates the virtualenv and installs the project from this checkout first.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/creditwatch demo

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis

# The two README commands, `make demo` and `make test`, do all their own set-up: they create
# .venv, install seqcast with its pinned dependencies (constraints.txt pins the CPU torch), and run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test fuzz bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test,dask]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/seqcast run

test: $(STAMP)
	$(BIN)/python -m pytest -q

# 10,000 property-based cases over the loader and every CLI verb (tests/test_fuzz.py); `make test`
# runs the same properties with about 520.
fuzz: $(STAMP)
	SEQCAST_FUZZ_EXAMPLES=10000 $(BIN)/python -m pytest -q -p no:cacheprovider --hypothesis-show-statistics tests/test_fuzz.py

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) out build src/*.egg-info .pytest_cache

# The whole set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MXVENV := .venv-mxnet
MXSTAMP := $(MXVENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test install mxnet-env lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[all]'
	touch $(STAMP)

# MXNet 1.9.1 is the reference for the MXNet importer; it needs numpy<1.24, so it lives in
# its own environment and is called as a subprocess.
mxnet-env: $(MXSTAMP)

$(MXSTAMP):
	test -x $(MXVENV)/bin/python || $(PYTHON) -m venv $(MXVENV)
	$(MXVENV)/bin/python -m pip install -q 'mxnet==1.9.1' 'numpy<1.24'
	touch $(MXSTAMP)

test: $(STAMP) $(MXSTAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	-$(MAKE) mxnet-env
	$(BIN)/python model_zoo/case_study.py

lint: $(STAMP)
	$(BIN)/ruff check portanet tests model_zoo benchmarks

clean:
	rm -rf $(VENV) $(MXVENV) out .pytest_cache

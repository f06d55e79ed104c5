# The whole set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MXVENV := .venv-mxnet
MXSTAMP := $(MXVENV)/.installed
# Real BVLC Caffe (test reference only; portanet never needs it). The vendored source sits beside the
# repository; without it `make caffe-env` says so and does nothing.
CAFFE_VENDOR ?= ../shared/vendor/caffe
CAFFEDIR := .venv-caffe
CAFFE_DEPS ?=
# two pytest-xdist workers, one test file per worker at a time (module fixtures built once);
# the model caches are built once under file locks. Serial: make test PYTEST_ARGS=
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: demo test install mxnet-env caffe-env lint clean

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

# Real Caffe 1.0 (CPU, pycaffe) built from the vendored source into .venv-caffe; the Caffe parity
# runner calls .venv-caffe/venv/bin/python as a subprocess. CAFFE_DEPS=--install-deps apt-installs
# the Debian build dependencies first (needs root).
caffe-env:
	@if [ -x $(CAFFEDIR)/venv/bin/python ] && GLOG_minloglevel=2 $(CAFFEDIR)/venv/bin/python -c 'import caffe' 2>/dev/null; then \
	  echo "caffe-env: real Caffe already built in $(CAFFEDIR)"; \
	elif [ ! -x $(CAFFE_VENDOR)/build.sh ]; then \
	  echo "caffe-env: skipped: no Caffe source at $(CAFFE_VENDOR) (set CAFFE_VENDOR=...); real-Caffe tests will skip"; \
	else \
	  bash $(CAFFE_VENDOR)/build.sh $(CAFFEDIR) $(CAFFE_DEPS); \
	fi

test: $(STAMP) $(MXSTAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	-$(MAKE) mxnet-env
	$(BIN)/python model_zoo/case_study.py

lint: $(STAMP)
	$(BIN)/ruff check portanet tests model_zoo benchmarks

clean:
	rm -rf $(VENV) $(MXVENV) $(CAFFEDIR) out .pytest_cache

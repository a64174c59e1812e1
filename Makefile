# The two set-up commands of README.md:
#   make demo   install everything, run the demo campaign (real GPAW) and write its report
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

.PHONY: demo test system-packages prefect-server stop

# The demo campaign: a local Prefect server (left running for its UI; `make stop` ends it),
# the bundled pool of 2,000 perovskites, real gpaw-fast calculations, a report at the end.
HOME_DIR := $(CURDIR)/.workbench
PREFECT_PORT ?= 4200
PREFECT_ENV := PREFECT_HOME=$(HOME_DIR)/prefect PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api \
  PREFECT_SERVER_ANALYTICS_ENABLED=false

demo: $(VENV)/.installed prefect-server
	$(BIN)/workbench init
	$(BIN)/workbench import $(EXAMPLES)/perovskites_pool.json.gz --source example-pool
	$(PREFECT_ENV) OMP_NUM_THREADS=1 $(BIN)/python -m flows.campaign $(EXAMPLES)/demo-campaign.yaml
	$(BIN)/workbench campaign report demo
	@echo "Prefect UI: http://127.0.0.1:$(PREFECT_PORT)  MLflow: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(HOME_DIR)/mlflow.db"
	@echo "Dashboard: $(BIN)/workbench serve, then http://127.0.0.1:8050/ (docs/dashboard.md)"

prefect-server: $(VENV)/.installed
	@mkdir -p $(HOME_DIR)/prefect
	@if ! curl -sf http://127.0.0.1:$(PREFECT_PORT)/api/health >/dev/null; then \
	  echo "starting a Prefect server on 127.0.0.1:$(PREFECT_PORT) (log: $(HOME_DIR)/prefect/server.log)"; \
	  $(PREFECT_ENV) nohup $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) \
	    > $(HOME_DIR)/prefect/server.log 2>&1 & echo $$! > $(HOME_DIR)/prefect/server.pid; \
	  for i in $$(seq 120); do curl -sf http://127.0.0.1:$(PREFECT_PORT)/api/health >/dev/null && break; sleep 1; done; \
	fi
	@curl -sf http://127.0.0.1:$(PREFECT_PORT)/api/health >/dev/null || (echo "Prefect server did not start"; exit 1)

stop:
	@if [ -f $(HOME_DIR)/prefect/server.pid ]; then kill $$(cat $(HOME_DIR)/prefect/server.pid) && rm $(HOME_DIR)/prefect/server.pid; fi

test: $(VENV)/.installed
	.ci/ensure-postgres
	$(BIN)/ruff check workbench flows tests migrations benchmarks
	$(BIN)/python -m pytest -n 2 --durations=15

system-packages:
	@missing=""; \
	command -v gcc >/dev/null || missing="$$missing build-essential"; \
	command -v git >/dev/null || missing="$$missing git"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	$(PYTHON) -c "import venv, ensurepip" 2>/dev/null || missing="$$missing python3-venv python3-dev"; \
	dpkg -s libxc-dev >/dev/null 2>&1 || missing="$$missing libxc-dev"; \
	dpkg -s libopenblas-dev >/dev/null 2>&1 || missing="$$missing libopenblas-dev"; \
	command -v pw.x >/dev/null || missing="$$missing quantum-espresso"; \
	command -v chromium >/dev/null || missing="$$missing chromium chromium-driver"; \
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

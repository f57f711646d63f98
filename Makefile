# ikto developer entry points. Everything runs as root on Debian 12.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
APT_PACKAGES := wireguard-tools wireguard-go nats-server iproute2 iptables iputils-ping procps util-linux curl

.PHONY: deps venv test test-unit test-integration test-e2e lint demo lab-down bench clean

# System packages the agent, the tests and the lab need (idempotent, quiet when present).
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "==> installing Debian packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	@echo "==> creating $(VENV) and installing ikto with its dev extras"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

# The whole suite: unit, integration (real nats-server 2.15 and Debian's 2.9) and e2e
# (real agents in network namespaces over wireguard-go). Needs root.
test: deps venv
	$(PY) -m pytest -q

test-unit: venv
	$(PY) -m pytest -q tests/unit

lint: venv
	$(VENV)/bin/ruff check ikto tests
	$(VENV)/bin/mypy

# A 3-node mesh in network namespaces on this host, left up to explore (needs root).
demo: deps venv
	@$(PY) -m ikto.lab.demo

# Remove the demo lab (processes, namespaces, mounts, state); safe to run twice.
lab-down:
	@if [ -x $(PY) ]; then $(PY) -m ikto.lab.cli down; else echo "==> no $(VENV), so no lab"; fi

# Real agents in network namespaces over wireguard-go (needs root; about 2 minutes).
test-e2e: deps venv
	$(PY) -m pytest -q -m e2e tests/e2e

# Benchmarks P1-P5 against their targets and the machine's own floor (needs root; ~5 minutes).
# BENCH_ARGS="--scale" also runs 100 and 1,000 peers; each bench/p*.py also runs alone.
bench: deps venv
	$(PY) bench/run_all.py $(BENCH_ARGS)

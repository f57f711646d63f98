# ikto developer entry points. Everything runs as root on Debian 12.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
APT_PACKAGES := wireguard-tools wireguard-go nats-server iproute2 iptables iputils-ping procps util-linux curl faketime prometheus

.PHONY: deps venv test test-unit test-integration test-e2e lint demo lab-down bench clean

# System packages the agent, the tests and the lab need (idempotent, quiet when present).
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "==> installing Debian packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# ikto with its dev extras, then the lab (lab/: ikto-lab, a separate distribution that the
# ikto wheel does not contain).
$(VENV)/.installed: pyproject.toml lab/pyproject.toml
	@echo "==> creating $(VENV) and installing ikto with its dev extras, and ikto-lab"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@$(PY) -m pip install -q -e ./lab
	@touch $@

venv: $(VENV)/.installed

# The whole suite: unit, integration (real nats-server 2.15 and Debian's 2.9) and e2e
# (real agents in network namespaces over wireguard-go). Needs root.
test: deps venv lint
	$(PY) -m pytest -q

test-unit: venv
	$(PY) -m pytest -q tests/unit

lint: venv
	$(VENV)/bin/ruff check ikto lab tests bench
	$(VENV)/bin/mypy

# A 3-node mesh in network namespaces on this host, left up to explore (needs root).
demo: deps venv
	@$(VENV)/bin/ikto-lab demo

# Remove the demo lab (processes, namespaces, mounts, state); safe to run twice.
lab-down:
	@if [ -x $(VENV)/bin/ikto-lab ]; then $(VENV)/bin/ikto-lab down; else echo "==> no $(VENV)/bin/ikto-lab, so no lab"; fi

# Real agents in network namespaces over wireguard-go (needs root; about 2 minutes).
test-e2e: deps venv
	$(PY) -m pytest -q -m e2e tests/e2e

# Benchmarks P1-P5 against their targets and the machine's own floor (needs root; ~5 minutes).
# BENCH_ARGS="--scale" also runs 100 and 1,000 peers; each bench/p*.py also runs alone.
bench: deps venv
	$(PY) bench/run_all.py $(BENCH_ARGS)

# ---- Vagrant lab: the e2e suite on Debian 12 VMs (libvirt, qemu software emulation) -----
# See the Vagrantfile. The VMs cannot reach any mirror: the box has every package baked in,
# ikto goes in as a wheelhouse built here.
VAGRANT_BOX      := vagrant/build/ikto-bookworm.box
VAGRANT_WHEELS   := vagrant/build/wheelhouse
VAGRANT_PACKAGES := vagrant vagrant-libvirt libvirt-daemon-system libvirt-daemon-driver-qemu \
                    libvirt-clients qemu-system-x86 qemu-utils dnsmasq-base debootstrap fdisk \
                    grub-pc-bin e2fsprogs openssh-client
# The suite starts 3 nodes and adds node4..node6: three spare VMs, provisioned but idle.
# A quicker subset: make e2e-vagrant E2E_VAGRANT_ENV="IKTO_VAGRANT_SPARES=0" \
#   E2E_VAGRANT_ARGS="-k 'full_mesh or restart'"
E2E_VAGRANT_ENV  ?= IKTO_VAGRANT_NODES=3 IKTO_VAGRANT_SPARES=3
E2E_VAGRANT_ARGS ?=

.PHONY: vagrant-deps libvirtd box vagrant-wheelhouse vagrant-vm-wheels e2e-vagrant vagrant-down

vagrant-deps:
	@missing=$$(for p in $(VAGRANT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "==> installing Debian packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# libvirtd and virtlogd: through systemd where it is PID 1, else started as daemons.
libvirtd: vagrant-deps
	@if ! virsh -c qemu:///system version >/dev/null 2>&1; then \
	  echo "==> starting virtlogd and libvirtd"; \
	  if [ -d /run/systemd/system ]; then systemctl start virtlogd libvirtd; \
	  else pidof virtlogd >/dev/null || virtlogd -d; pidof libvirtd >/dev/null || libvirtd -d; fi; \
	  for i in $$(seq 50); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done; \
	  virsh -c qemu:///system version >/dev/null; \
	fi

# ikto's wheel (rebuilt every time: the version does not change between edits) and its
# dependencies' wheels, from PyPI or pip's cache.
vagrant-wheelhouse: venv
	@echo "==> wheelhouse: $(VAGRANT_WHEELS)"
	@mkdir -p $(VAGRANT_WHEELS) && rm -f $(VAGRANT_WHEELS)/ikto-*.whl
	@$(PY) -m pip wheel -q . -w $(VAGRANT_WHEELS) 2>&1 | grep -v '^WARNING: Location' || true
	@ls $(VAGRANT_WHEELS)/ikto-*.whl >/dev/null

# What provisioning uploads: ikto's wheel and any wheel the box was not built with
# ($(VAGRANT_BOX).wheels lists those it was).
vagrant-vm-wheels: box vagrant-wheelhouse
	@rm -rf vagrant/build/vm-wheels && mkdir -p vagrant/build/vm-wheels
	@for w in $(VAGRANT_WHEELS)/*.whl; do \
	  grep -qxF "$$(basename $$w)" $(VAGRANT_BOX).wheels 2>/dev/null || cp $$w vagrant/build/vm-wheels/; \
	done
	@echo "==> for the VMs:" $$(cd vagrant/build/vm-wheels && ls)

$(VAGRANT_BOX): vagrant/build-box.sh vagrant/box/Vagrantfile $(wildcard vagrant/box/files/*) pyproject.toml | vagrant-wheelhouse
	@echo "==> building $@ (debootstrap; about 2-3 minutes)"
	@nice -n 10 vagrant/build-box.sh $@ $(VAGRANT_WHEELS)

# Build the box if it is missing or stale, and add it to Vagrant as ikto/bookworm.
box: libvirtd $(VAGRANT_BOX)
	@if [ vagrant/build/.box-added -nt $(VAGRANT_BOX) ] && vagrant box list 2>/dev/null | grep -q '^ikto/bookworm '; then \
	  echo "==> box ikto/bookworm is up to date"; \
	else \
	  if [ -z "$$(virsh -c qemu:///system list --all --name)" ]; then \
	    for v in $$(virsh -c qemu:///system vol-list default 2>/dev/null | awk '$$1 ~ /^ikto-VAGRANTSLASH-bookworm_/ {print $$1}'); do \
	      virsh -c qemu:///system vol-delete --pool default $$v >/dev/null; done; \
	  fi; \
	  echo "==> vagrant box add --force ikto/bookworm"; \
	  vagrant box add --force --name ikto/bookworm $(VAGRANT_BOX) >/dev/null && touch vagrant/build/.box-added; \
	fi

# Boot the Vagrant lab, run tests/e2e against it (IKTO_E2E_LAB=vagrant), always destroy it.
# About 15-20 minutes on 2 cores; IKTO_VAGRANT_KEEP=1 keeps the VMs for another run.
e2e-vagrant: venv vagrant-vm-wheels
	@$(E2E_VAGRANT_ENV) PY=$(PY) vagrant/e2e.sh $(E2E_VAGRANT_ARGS)

# Remove the Vagrant lab's VMs (safe to run twice).
vagrant-down:
	@if ls .vagrant/machines/*/libvirt/id >/dev/null 2>&1; then vagrant destroy -f; else echo "==> no Vagrant VMs"; fi
	@rm -f .vagrant/ikto-inventory.json .vagrant/ikto-lab.json

.PHONY: test-faults soak

# Fault injection, "Never lose a peer": NATS servers killed and bounced, the bucket
# recreated, firewalls, SIGSTOP, skewed clocks, claim races, 5,000-update bursts, per-node
# permissions, and a 60 s soak; real agents in namespace labs (needs root; ~6 minutes).
test-faults: deps venv
	$(PY) -m pytest -q -m faults tests/faults

# The full soak: ten nodes, one join or leave a second, for five minutes.
soak: deps venv
	IKTO_SOAK_SECONDS=300 $(PY) -m pytest -q -m faults tests/faults/test_6_soak.py

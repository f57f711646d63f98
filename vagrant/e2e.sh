#!/usr/bin/env bash
# make e2e-vagrant: boot the Vagrant lab, run tests/e2e against it, always destroy it.
#   vagrant/e2e.sh [PYTEST ARGS...]
# Environment: as the Vagrantfile (IKTO_VAGRANT_NODES, IKTO_VAGRANT_SPARES, ...);
# IKTO_VAGRANT_KEEP=1 leaves the VMs up afterwards (then `make vagrant-down`).
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PY:-.venv/bin/python}
started=$SECONDS
phase() { printf '==> [%4ds] %s\n' $((SECONDS - started)) "$*"; }

destroy() {
  rc=$?
  if [[ ${IKTO_VAGRANT_KEEP:-0} == 1 ]]; then
    phase "leaving the VMs up (IKTO_VAGRANT_KEEP=1): make vagrant-down removes them"
  else
    t=$SECONDS
    phase "vagrant destroy -f"
    vagrant destroy -f >/dev/null 2>&1 || vagrant destroy -f
    rm -f .vagrant/ikto-inventory.json .vagrant/ikto-lab.json
    phase "destroyed in $((SECONDS - t)) s"
  fi
  phase "done (exit $rc)"
  exit "$rc"
}
trap destroy EXIT
trap 'exit 130' INT TERM

if compgen -G '.vagrant/machines/*/libvirt/id' >/dev/null; then
  phase "destroying VMs an earlier run left"
  vagrant destroy -f >/dev/null
fi
t=$SECONDS
phase "vagrant up: ${IKTO_VAGRANT_NODES:-3} nodes + ${IKTO_VAGRANT_SPARES:-0} spare VMs (software emulation: minutes)"
vagrant up --provider=libvirt >vagrant/build/logs/vagrant-up.log 2>&1 || {
  grep -av 'Progress:' vagrant/build/logs/vagrant-up.log | tail -40
  phase "vagrant up failed (full log: vagrant/build/logs/vagrant-up.log)"
  exit 1
}
phase "VMs up and provisioned in $((SECONDS - t)) s"
free -m | awk '/^Mem:/ {printf "    host memory: %d MiB used of %d MiB\n", $3, $2}'

t=$SECONDS
phase "e2e suite against the Vagrant lab"
IKTO_VAGRANT_DIR="$PWD" IKTO_E2E_LAB=vagrant "$py" -m pytest -q -m e2e tests/e2e "$@"
rc=$?
phase "e2e suite finished in $((SECONDS - t)) s (pytest exit $rc)"
exit $rc

#!/bin/bash
# Vagrant provisioner, every node: install ikto from the uploaded wheelhouse, run
# `ikto init` here (the private key is made on the node and never leaves it), and run the
# agent as the packaged systemd unit.
# A spare gets ikto and the unit only: the lab driver's add_node() runs `ikto init` later.
#   provision-ikto.sh NAME LAB_IP NATS_URL MESH_CIDR SUBNET_PREFIX member|spare
set -euo pipefail
name=$1 ip=$2 nats_url=$3 mesh=$4 prefix=$5 role=${6:-member}
wheelhouse=/tmp/ikto-wheelhouse
venv=/opt/ikto
config=/etc/ikto/ikto.json

whl=$(ls "$wheelhouse"/ikto-*.whl 2>/dev/null | head -1)
[[ -n $whl ]] || { echo "$name: no ikto wheel in $wheelhouse" >&2; exit 1; }
[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
# The box has ikto's dependencies (vagrant/build-box.sh); `make vagrant-wheelhouse`
# uploads only those it lacks. pip takes minutes under emulation, so it runs only then.
others=$(ls "$wheelhouse"/*.whl | grep -v '/ikto-' || true)
if [[ -n $others ]]; then
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q --no-index --no-deps $others
fi
# Debian's python3-installer unpacks a wheel in seconds; run by the venv's python, it
# installs into the venv. It does not overwrite, so remove an earlier ikto first.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$site/ikto" "$site"/ikto-*.dist-info "$venv/bin/ikto"
PYTHONPATH=/usr/lib/python3/dist-packages "$venv/bin/python" -m installer "$whl"
ln -sf "$venv/bin/ikto" /usr/local/bin/ikto

install -m 0644 /tmp/ikto-agent.service /etc/systemd/system/ikto-agent.service
install -d -m 0755 /etc/systemd/system/ikto-agent.service.d
cat >/etc/systemd/system/ikto-agent.service.d/20-lab.conf <<'UNIT'
# The e2e suite drives the agent's life itself (stop, SIGKILL, start): a killed agent
# must stay down until the suite starts it again.
[Service]
Restart=no
UNIT

systemctl daemon-reload
if [[ $role == spare ]]; then
  echo "$name: spare: ikto installed, not initialised"
  exit 0
fi
if [[ ! -f $config ]]; then
  ikto init -m "$mesh" -p "$prefix" --private-key-path /etc/ikto/private.key \
    --name "$name" --advertise-address "$ip" --nats-url "$nats_url" -o "$config"
fi
systemctl enable ikto-agent.service
systemctl restart ikto-agent.service
for _ in $(seq 240); do
  [[ -S /run/ikto/ikto.sock ]] && { echo "$name: ikto agent running"; exit 0; }
  systemctl -q is-active ikto-agent.service || break
  sleep 0.5
done
echo "$name: the ikto agent did not open /run/ikto/ikto.sock" >&2
systemctl status ikto-agent.service --no-pager >&2 || true
journalctl -u ikto-agent.service --no-pager -n 40 >&2
exit 1

#!/bin/bash
# Vagrant provisioner, node1 only: the lab's NATS server (Debian's nats-server, JetStream).
#   provision-nats.sh LAB_IP
set -euo pipefail
ip=$1

install -d -m 0755 /etc/ikto-nats
cat >/etc/ikto-nats/nats.conf <<CONF
# The ikto lab's NATS server; no auth (the lab network is isolated and ephemeral).
server_name: ikto-lab
listen: 0.0.0.0:4222
http: 127.0.0.1:8222
jetstream {
  store_dir: /var/lib/ikto-nats
  max_memory_store: 64MB
  max_file_store: 256MB
}
CONF
cat >/etc/systemd/system/ikto-nats.service <<'UNIT'
[Unit]
Description=NATS server for the ikto lab
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/sbin/nats-server -c /etc/ikto-nats/nats.conf
DynamicUser=yes
StateDirectory=ikto-nats
Restart=on-failure
KillSignal=SIGTERM

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now ikto-nats.service

# Healthy = JetStream answers on the monitoring port. Bash alone: python3 takes seconds
# to start under emulation, and the box has no curl.
healthy() {
  exec 3<>/dev/tcp/127.0.0.1/8222 || return 1
  printf 'GET /healthz?js-enabled-only=true HTTP/1.0\r\n\r\n' >&3
  grep -q '"ok"' <&3
}
deadline=$((SECONDS + 90))
while (( SECONDS < deadline )) && systemctl -q is-active ikto-nats.service; do
  if (healthy) 2>/dev/null; then
    echo "nats: healthy at nats://$ip:4222 ($(/usr/sbin/nats-server --version))"
    exit 0
  fi
  sleep 0.2
done
echo "nats: not healthy (the service is $(systemctl is-active ikto-nats.service))" >&2
journalctl -u ikto-nats.service --no-pager -n 30 >&2
exit 1

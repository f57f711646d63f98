#!/bin/bash
# Hand-made WireGuard between two lab VMs, without ikto: checks the box, the isolated lab
# network and the kernel/userspace split. Each node makes its own key; only public keys
# cross the host. Run after `IKTO_VAGRANT_SKIP_IKTO=1 vagrant up` (or a full up: it uses
# its own interface, wg-smoke, on port 51999 and removes it afterwards).
#   vagrant/wg-smoke.sh [NODE_A NODE_B]     (default: node1 and the last node)
set -euo pipefail
cd "$(dirname "$0")/.."
a=${1:-node1}
b=${2:-node${IKTO_VAGRANT_NODES:-3}}
# Plain ssh with one reused connection per node: ~2 s a call instead of ~5 s for `vagrant ssh`.
cfg=$(mktemp -d)
trap 'for n in "$a" "$b"; do ssh -F "$cfg/config" -O exit "$n" 2>/dev/null; done; rm -rf "$cfg"' EXIT
vagrant ssh-config "$a" "$b" >"$cfg/config"
vssh() {
  ssh -F "$cfg/config" -o ControlMaster=auto -o ControlPath="$cfg/%h" -o ControlPersist=120 \
    "$1" sudo bash -s <<<"$2"
}

declare -A ip pub tun
ip[$a]=$(vssh "$a" "ip -4 -o addr show dev eth1 | awk '{print \$4}' | cut -d/ -f1" | tr -d '\r')
ip[$b]=$(vssh "$b" "ip -4 -o addr show dev eth1 | awk '{print \$4}' | cut -d/ -f1" | tr -d '\r')
tun[$a]=198.19.255.1; tun[$b]=198.19.255.2   # inside the tunnel only (198.18.0.0/15)
for n in "$a" "$b"; do
  pub[$n]=$(vssh "$n" "umask 077; wg genkey >/etc/wireguard/wg-smoke.key; wg pubkey </etc/wireguard/wg-smoke.key" | tr -d '\r')
done
for n in "$a" "$b"; do
  peer=$([[ $n == "$a" ]] && echo "$b" || echo "$a")
  vssh "$n" "umask 077; cat >/etc/wireguard/wg-smoke.conf <<CONF
[Interface]
PostUp = wg set %i private-key /etc/wireguard/wg-smoke.key
Address = ${tun[$n]}/24
ListenPort = 51999
[Peer]
PublicKey = ${pub[$peer]}
AllowedIPs = ${tun[$peer]}/32
Endpoint = ${ip[$peer]}:51999
CONF
wg-quick up wg-smoke 2>&1 | grep -E \"Falling back|wireguard-go|ip link add\" || true"
done
for n in "$a" "$b"; do
  impl=$(vssh "$n" "pgrep -x wireguard-go >/dev/null && echo wireguard-go || echo kernel" | tr -d '\r')
  echo "$n (${ip[$n]}): $impl WireGuard"
done
rc=0
if vssh "$a" "ping -c 3 -W 5 ${tun[$b]}"; then echo "ping $a -> $b over WireGuard: OK"; else rc=1; fi
vssh "$b" "wg show wg-smoke latest-handshakes" || true
for n in "$a" "$b"; do vssh "$n" "wg-quick down wg-smoke >/dev/null 2>&1; rm -f /etc/wireguard/wg-smoke.*"; done
exit $rc

#!/bin/bash
# Vagrant provisioner, every node: hostname, lab address, WireGuard implementation.
#   provision-base.sh NAME LAB_IP kernel|userspace
set -euo pipefail
name=$1 ip=$2 mode=$3

hostnamectl set-hostname "$name"
grep -q "^127.0.1.1 $name\$" /etc/hosts || echo "127.0.1.1 $name" >>/etc/hosts
# The lab network is eth1 (the box boots with net.ifnames=0; eth0 is Vagrant's management).
cat >/etc/systemd/network/20-lab.network <<NET
[Match]
Name=eth1

[Network]
Address=$ip/24
LinkLocalAddressing=no
IPv6AcceptRA=no
NET
networkctl reload
for _ in $(seq 60); do
  ip -4 -br addr show dev eth1 2>/dev/null | grep -q " ${ip}/" && break
  sleep 0.5
done

blocklist=/etc/modprobe.d/ikto-lab-userspace.conf
dropin=/etc/systemd/system/ikto-agent.service.d
mkdir -p "$dropin"
case $mode in
  userspace)
    # wg-quick falls back to wireguard-go only when `ip link add type wireguard` fails
    # and the module is not loaded (wg-quick's add_if()). Forbid loading it here.
    printf 'blacklist wireguard\ninstall wireguard /bin/false\n' >"$blocklist"
    if [[ -e /sys/module/wireguard ]]; then rmmod wireguard; fi
    cat >"$dropin/10-userspace.conf" <<'UNIT'
# This lab node runs wireguard-go: the kernel module is blocked in /etc/modprobe.d.
[Service]
Environment=WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go
UNIT
    ;;
  kernel)
    rm -f "$blocklist" "$dropin/10-userspace.conf"
    modprobe wireguard || { echo "$name: the kernel has no WireGuard module" >&2; exit 1; }
    ;;
  *) echo "usage: $0 NAME LAB_IP kernel|userspace" >&2; exit 2 ;;
esac

ip -4 -br addr show | grep -q " ${ip}/" || {
  echo "$name: $ip is not configured on any interface" >&2; ip -br addr >&2; exit 1; }
echo "$name: lab address $ip, WireGuard: $mode, kernel $(uname -r)"

#!/usr/bin/env bash
# Build a minimal Debian 12 (bookworm) Vagrant box for the libvirt provider, from Debian
# packages only: debootstrap -> ext4 image (mkfs.ext4 -d, no mount) -> MBR disk with GRUB
# written by hand (no loop partitions, no udev) -> qcow2 -> .box tarball.
#
#   vagrant/build-box.sh OUTPUT.box [WHEELHOUSE]
#
# WHEELHOUSE (optional): a `pip wheel .` directory; every wheel in it except ikto's own
# is installed into /opt/ikto (a venv), so provisioning only installs the ikto wheel.
# OUTPUT.box.wheels lists them.
# The guests have no network, so everything they need is baked in here.
#
# Environment: IKTO_BOX_MIRROR (Debian mirror), IKTO_BOX_DISK_GB (virtual disk size, 4).
set -euo pipefail

out=${1:?usage: build-box.sh OUTPUT.box [WHEELHOUSE]}
wheelhouse=${2:-}
mirror=${IKTO_BOX_MIRROR:-http://deb.debian.org/debian}
disk_gb=${IKTO_BOX_DISK_GB:-4}
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "$out")
build=$(dirname "$out")
work="$build/box-work"
cache="$build/debs"          # debootstrap's package cache: a rebuild downloads nothing
started=$SECONDS

step() { printf '==> [%3ds] %s\n' $((SECONDS - started)) "$*"; }
die() { echo "build-box: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root (debootstrap and chroot)"
for tool in debootstrap mkfs.ext4 sfdisk qemu-img grub-mkimage; do
  command -v "$tool" >/dev/null || die "$tool not found (make box installs the host packages)"
done
grub_dir=/usr/lib/grub/i386-pc
[[ -f $grub_dir/boot.img ]] || die "$grub_dir/boot.img not found (apt-get install grub-pc-bin)"

# Everything the guests need, since they cannot reach a mirror. systemd-sysv and udev:
# minbase has no init; dbus: hostnamectl (vagrant sets the hostname with it).
packages=(
  systemd-sysv udev dbus kmod procps iproute2 iputils-ping netbase less
  linux-image-cloud-amd64 initramfs-tools
  openssh-server sudo rsync
  wireguard-tools wireguard-go nats-server
  python3 python3-venv python3-installer
  iptables nftables tcpdump
)

rootfs="$work/rootfs"
cleanup() { umount -R "$rootfs/proc" 2>/dev/null || true; }
trap cleanup EXIT

umount -R "$rootfs/proc" 2>/dev/null || true   # a killed earlier run
rm -rf "$work"
mkdir -p "$work" "$cache"

step "debootstrap bookworm (minbase + ${#packages[@]} packages) from $mirror"
# --cache-dir keeps the .debs between builds (debootstrap 1.0.128 supports it).
debootstrap --variant=minbase --cache-dir="$cache" \
  --include="$(IFS=,; echo "${packages[*]}")" \
  bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -30 "$work/debootstrap.log"; die "debootstrap failed (log: $work/debootstrap.log)"; }

step "configuring the guest"
install -m 0644 "$here/box/files/fstab" "$rootfs/etc/fstab"
install -m 0644 "$here/box/files/hosts" "$rootfs/etc/hosts"
echo ikto-box >"$rootfs/etc/hostname"
install -m 0644 "$here/box/files/10-mgmt.network" "$rootfs/etc/systemd/network/10-mgmt.network"
install -m 0644 "$here/box/files/ssh-hostkeys.service" "$rootfs/etc/systemd/system/ssh-hostkeys.service"
install -m 0644 "$here/box/files/sshd-vagrant.conf" "$rootfs/etc/ssh/sshd_config.d/vagrant.conf"
install -m 0644 "$here/box/files/journald.conf" "$rootfs/etc/systemd/journald.conf.d/ikto.conf" -D
install -m 0440 "$here/box/files/sudoers-vagrant" "$rootfs/etc/sudoers.d/vagrant"
mount -t proc proc "$rootfs/proc"
chroot "$rootfs" /bin/bash -euo pipefail -s <<'EOF'
useradd --create-home --shell /bin/bash --user-group vagrant
install -d -m 0700 -o vagrant -g vagrant /home/vagrant/.ssh
# Vagrant's well-known insecure key; `vagrant up` replaces it with a fresh one per VM.
echo 'ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr+kz4TjGYe7gHzIw+niNltGEFHzD8+v1I2YJ6oXevct1YeS0o9HZyN1Q9qgCgzUFtdOKLv6IedplqoPkcmF0aYet2PkEDo3MlTBckFXPITAMzF8dJSIFo9D8HfdOV0IAdx4O7PtixWKn5y2hMNG0zQPyUecp4pzC6kivAIhyfHilFR61RGL+GPXQ2MWZWFYbAGjyiYJnAmCP3NOTd0jMZEnDkbUvxhMmBYSdETk1rRgm+R4LOzFUGaHqHDLKLX+FIPKcF96hrucXzcWyLbIbEgE98OHlnVYCzRdK8jlqm8tehUc9c9WhQ== vagrant insecure public key' \
  >/home/vagrant/.ssh/authorized_keys
chown vagrant:vagrant /home/vagrant/.ssh/authorized_keys
chmod 0600 /home/vagrant/.ssh/authorized_keys
# The same key for root (sshd's default prohibit-password allows keys only): the lab driver
# runs every command as root, and sudo alone costs ~0.25 s a call under emulation.
install -d -m 0700 /root/.ssh
install -m 0600 /home/vagrant/.ssh/authorized_keys /root/.ssh/authorized_keys
passwd --lock root >/dev/null
systemctl enable systemd-networkd.service ssh-hostkeys.service >/dev/null 2>&1
# Every VM makes its own host keys at first boot (ssh-hostkeys.service).
rm -f /etc/ssh/ssh_host_*
# Provisioning runs its own NATS unit on one node; the packaged one must not start anywhere.
systemctl disable nats-server.service >/dev/null 2>&1 || true
# Timers that would only burn emulated CPU in a short-lived lab VM.
for t in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer fstrim.timer; do
  systemctl mask "$t" >/dev/null 2>&1 || true
done
# An EMPTY machine-id: each VM generates its own at boot, so their DHCP client IDs
# (systemd-networkd derives its DUID from it) differ. See machine-id(5).
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id
EOF

# Which wheels the box has: provisioning uploads only ikto's and any missing here
# (copying files into an emulated VM over ssh runs at well under 1 MB/s).
manifest="$out.wheels"
: >"$manifest.tmp"
if [[ -n $wheelhouse ]]; then
  step "baking ikto's dependencies from $wheelhouse into /opt/ikto"
  mkdir -p "$rootfs/tmp/wheelhouse"
  find "$wheelhouse" -maxdepth 1 -name '*.whl' ! -name 'ikto-*' -exec cp {} "$rootfs/tmp/wheelhouse/" \;
  chroot "$rootfs" /bin/bash -euo pipefail -c '
    python3 -m venv /opt/ikto
    /opt/ikto/bin/pip install -q --no-index --no-cache-dir /tmp/wheelhouse/*.whl
    rm -rf /tmp/wheelhouse'
  find "$wheelhouse" -maxdepth 1 -name '*.whl' ! -name 'ikto-*' -printf '%f\n' | sort >"$manifest.tmp"
else
  chroot "$rootfs" python3 -m venv /opt/ikto
fi
umount "$rootfs/proc"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log

kernel=$(cd "$rootfs/boot" && ls vmlinuz-* | sort -V | tail -1)
initrd=initrd.img-${kernel#vmlinuz-}
[[ -f $rootfs/boot/$initrd ]] || die "no $initrd in the image (initramfs-tools failed?)"
step "boot loader: GRUB for $kernel"
mkdir -p "$rootfs/boot/grub/i386-pc"
cp "$grub_dir"/*.mod "$grub_dir"/*.lst "$rootfs/boot/grub/i386-pc/"
sed -e "s/@KERNEL@/$kernel/" -e "s/@INITRD@/$initrd/" "$here/box/files/grub.cfg" \
  >"$rootfs/boot/grub/grub.cfg"

step "disk image: ${disk_gb} GiB sparse, MBR, ext4 root at 1 MiB (mkfs.ext4 -d: no mount)"
disk="$work/disk.raw"
rm -f "$disk"
truncate -s "${disk_gb}G" "$disk"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$disk"
mkfs.ext4 -q -F -L ikto-root -E offset=$((2048 * 512)) -d "$rootfs" "$disk" "$(( disk_gb * 1024 - 1 ))M"
# What grub-install would do, without the OS devices it insists on (a container has no
# partition nodes for loop devices): boot.img's code goes in the MBR (its partition table
# is kept), core.img right after it. boot.img reads core.img from sector 1, and
# core.img's first sector reads the rest from sector 2 (its defaults; see grub's
# boot/i386/pc/boot.S and diskboot.S).
grub-mkimage -O i386-pc -o "$work/core.img" -p '(hd0,msdos1)/boot/grub' \
  biosdisk part_msdos ext2 normal linux configfile search echo test gzio
core_sectors=$(( ($(stat -c %s "$work/core.img") + 511) / 512 ))
(( core_sectors < 2047 )) || die "core.img is $core_sectors sectors: too big for the MBR gap"
dd if="$grub_dir/boot.img" of="$disk" bs=440 count=1 conv=notrunc status=none
dd if="$work/core.img" of="$disk" bs=512 seek=1 conv=notrunc status=none

step "qcow2 and box"
qemu-img convert -O qcow2 "$disk" "$work/box.img"
rm -f "$disk"
cp "$here/box/Vagrantfile" "$work/Vagrantfile"
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$disk_gb" \
  >"$work/metadata.json"
tar -C "$work" -cf "$out.tmp" metadata.json Vagrantfile box.img
mv "$out.tmp" "$out"
mv "$manifest.tmp" "$manifest"
rm -rf "$work"
step "built $out ($(du -h "$out" | cut -f1))"

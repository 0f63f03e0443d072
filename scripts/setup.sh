#!/usr/bin/env bash
# One install for everything ucvm-lab needs; `nightly` and `test` both call it.
# Idempotent: a second call on a ready machine only checks and returns.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/.venv"

apt_packages=(
  qemu-system-x86 qemu-utils seabios ipxe-qemu       # the hypervisor, its BIOS and NIC ROMs
  libvirt-daemon-system procps                       # libvirtd; pgrep/pkill to manage it
  libvirt-dev pkg-config gcc python3-dev             # what libvirt-python builds with
  busybox-static cpio xz-utils kmod                  # the boot loader's initramfs (kmod: depmod)
  syslinux syslinux-common isolinux mtools dosfstools fdisk xorriso  # bootable disk and ISO
  python3-venv                                       # the virtual environment
  glpk-utils dose-distcheck                          # the paper's ILP engine; an independent closure check
  python3-solv                                       # libsolv: the solver benchmark's speed of light
  rpm createrepo-c                                   # a small RPM repository for the index reader's tests
  mmdebstrap squashfs-tools e2fsprogs lz4            # OS roots, their snapshots, the baseline disk
  nginx-light socat                                  # the OS repository's server; guest -> host forwards
  libsodium-dev musl-tools                           # ucvm-blockd: Ed25519 + SHA-256, static, small (musl)
  openssh-client                                     # the context suite logs in as the user cloud-init made
  golang-go golang-github-vmware-govmomi-dev         # govmomi's vCenter simulator, for the VMware driver's tests
  postgresql                                         # a real PostgreSQL server for the history's tests
  chromium fonts-dejavu-core                         # the report's pages tested in a real browser
)

log() { printf 'setup: %s\n' "$*" >&2; }
apt_install_now() {
  log "apt-get install $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
((${#missing[@]})) && apt_install_now "${missing[@]}"

# libvirtd without systemd (see ../shared/FACTS.md): start the daemons when they are not running.
# Without udev, /dev/kvm stays 0600 root; libvirt then finds its cached QEMU capabilities
# invalid on every call ("KVM ... is not available now") and re-probes QEMU each time.
# Give it udev's usual mode. Whether KVM really runs a guest is decided by the lab's probe boot.
if [ -c /dev/kvm ] && getent group kvm >/dev/null; then
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi
mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/qemu /run/libvirt
# Guests reach host services through QEMU's guestfwd, which spawns a socat per connection;
# libvirt's default seccomp sandbox forbids QEMU to spawn anything. Restart on a change.
qemu_conf=/etc/libvirt/qemu.conf
if ! grep -qx 'seccomp_sandbox = 0' "$qemu_conf"; then
  log "allowing QEMU to spawn guestfwd helpers (seccomp_sandbox = 0 in $qemu_conf)"
  echo 'seccomp_sandbox = 0' >>"$qemu_conf"
  pkill -x libvirtd && for _ in $(seq 50); do pgrep -x libvirtd >/dev/null || break; sleep 0.1; done
fi
pgrep -x virtlogd >/dev/null || { log "starting virtlogd"; virtlogd -d; }
if ! pgrep -x libvirtd >/dev/null; then
  log "starting libvirtd"
  libvirtd -d
fi
for _ in $(seq 100); do [ -S /run/libvirt/libvirt-sock ] && break; sleep 0.1; done
[ -S /run/libvirt/libvirt-sock ] || { log "libvirtd did not come up: see /var/log/libvirt/libvirtd.log"; exit 1; }

# The Python side: exactly the pinned, hashed set of requirements.lock (refresh it with
# scripts/lock.sh), then the lab itself without dependencies. A new virtual environment is
# made whenever the lock or pyproject.toml changes, so nothing unlocked lingers in it.
stamp="$venv/.installed-$(cat "$here/pyproject.toml" "$here/requirements.lock" | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  log "creating the virtual environment in $venv from requirements.lock"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --require-hashes -r "$here/requirements.lock"
  "$venv/bin/pip" install -q --no-deps -e "$here"
  touch "$stamp"
fi

# The Allure HTML report generator (npm package `allure`, v3, Node only).
command -v npm >/dev/null || apt_install_now nodejs npm
if [ ! -x "$here/node_modules/.bin/allure" ]; then
  log "installing the Allure report generator"
  (cd "$here" && npm install --silent --no-audit --no-fund --no-save allure@3.18.0 >/dev/null)
fi

#!/usr/bin/env bash
# Installs the Debian packages Target's tests and tools use, but only the missing ones:
# apt-get update runs once, and only when something must be installed. Non-interactive.
#   fio           fio --ioengine=nbd (interop tests, make bench)
#   libnbd-bin    nbdinfo, nbdcopy (and nbdfuse on Debian 12)
#   nbdfuse       nbdfuse (its own package on later Debian releases)
#   nbdkit        peer NBD server for benchmarks
#   qemu-utils    qemu-img, qemu-io, qemu-nbd
#   qemu-block-extra  qemu-img's iscsi:// driver
#   libiscsi-bin  iscsi-ls, iscsi-inq, iscsi-perf
#   tgt           tgtd, peer iSCSI target for benchmarks
#   xxhash        xxhsum (reference XXH3 values)
#   e2fsprogs     mkfs.ext4, fsck.ext4
#   fuse3         fusermount3
set -euo pipefail

# package -> a command it provides. A package counts as present when dpkg says it is installed
# or its command is on the PATH (nbdfuse ships inside libnbd-bin on Debian 12).
packages=(fio libnbd-bin nbdfuse nbdkit qemu-utils qemu-block-extra libiscsi-bin tgt xxhash e2fsprogs fuse3)
declare -A commands=(
  [fio]=fio [libnbd-bin]=nbdinfo [nbdfuse]=nbdfuse [nbdkit]=nbdkit [qemu-utils]=qemu-img [qemu-block-extra]=/usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so
  [libiscsi-bin]=iscsi-ls [tgt]=tgtd [xxhash]=xxhsum [e2fsprogs]=mkfs.ext4 [fuse3]=fusermount3
)
# Where a package does not exist in this release, the one that carries its command instead.
declare -A fallbacks=([nbdfuse]=libnbd-bin)

export PATH="$PATH:/usr/sbin:/sbin"

# A command given as a path (a library such as block-iscsi.so) is present when the file exists:
# `command -v` only finds executables.
present() {
  local provides=${commands[$1]}
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]] && return 0
  if [[ "$provides" == /* ]]; then [[ -e "$provides" ]]; else command -v "$provides" >/dev/null 2>&1; fi
}

missing=()
for package in "${packages[@]}"; do
  present "$package" || missing+=("$package")
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all test dependencies are present"
  exit 0
fi

sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo -n)
  else
    echo "install-deps: not root and no sudo; as root run: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-deps: missing ${missing[*]}; running apt-get update"
"${sudo[@]}" apt-get update -qq

install=()
for package in "${missing[@]}"; do
  candidate=$(apt-cache policy "$package" 2>/dev/null | awk '/Candidate:/ { print $2 }')
  if [[ -z "$candidate" || "$candidate" == "(none)" ]] && [[ -n "${fallbacks[$package]:-}" ]]; then
    echo "install-deps: no package $package here; ${commands[$package]} comes from ${fallbacks[$package]}"
    package=${fallbacks[$package]}
  fi
  [[ " ${install[*]} " == *" $package "* ]] || install+=("$package")
done

echo "install-deps: installing ${install[*]}"
"${sudo[@]}" apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${install[@]}"

still=()
for package in "${missing[@]}"; do
  present "$package" || still+=("$package (${commands[$package]})")
done
if ((${#still[@]} > 0)); then
  echo "install-deps: still missing after apt-get: ${still[*]}" >&2
  exit 1
fi
echo "install-deps: done"

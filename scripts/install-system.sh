#!/usr/bin/env bash
# Installs the Debian packages the scheduler and its tests use. postgresql-15 and nginx are the
# sources of the demo images, which `make images` copies from the host; docker.io is only a peer
# that the tests load those images into, to prove the archives work with Docker too.
# Idempotent: a machine that has them all returns at once without touching apt.
set -euo pipefail

packages=(
  containerd runc containernetworking-plugins iptables iproute2 busybox-static
  docker-registry skopeo apache2-utils
  postgresql-15 nginx
  conntrack
  docker.io
  # The Go client: stubs generated from proto/ and the example built in GOPATH mode. The 1.5
  # line of github.com/golang/protobuf (which replaces the 1.3 one) is the one that grpc-go can
  # marshal protoc-gen-go's current messages with.
  golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc
  golang-google-grpc-dev golang-google-protobuf-dev golang-google-genproto-dev
  golang-github-golang-protobuf-1-5-dev
  # Operations: a real Prometheus (and promtool) scrapes the metrics endpoint and checks the
  # alert rules; systemd provides systemd-analyze, which verifies the unit file.
  prometheus systemd
  # The fleet mode keeps its state in etcd; the tests run a real 3-member cluster of it.
  etcd-server
  # volumes.filesystem: xfs-image formats its image with mkfs.xfs (reflink=1) and grows it with
  # xfs_growfs; e2fsprogs' filefrag shows the tests that clones share extents.
  xfsprogs e2fsprogs
)

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
# npm installs the buf CLI into tools/buf; any npm will do (some nodejs builds ship their own).
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "scheduler needs these Debian packages: ${missing[*]} (run this script as root)" >&2
  exit 1
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Another apt run (a second checkout's setup) may hold the dpkg lock: wait for it instead of failing.
apt-get -o DPkg::Lock::Timeout=600 update -qq
# --no-install-recommends keeps the install small; policy-rc.d stops postinst scripts from
# starting services (postgresql, nginx, docker-registry) that we run ourselves when needed.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >&2

#!/usr/bin/env bash
# Builds examples/go with Debian's Go toolchain in GOPATH mode: grpc-go, protobuf-go and genproto
# come from /usr/share/gocode (golang-google-*-dev), and this repository is linked into a
# private GOPATH under build/ as github.com/scheduler/scheduler (the stubs' go_package). No
# module proxy or network is involved.
# Usage: scripts/build_go_example.sh [OUTPUT]   (default build/go/example)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/build/go/example}"
gopath="$root/build/gopath"
mkdir -p "$gopath/src/github.com/scheduler" "$(dirname "$out")"
ln -sfn "$root" "$gopath/src/github.com/scheduler/scheduler"
export GOPATH="$gopath:/usr/share/gocode" GO111MODULE=off GOFLAGS= GOPROXY=off
export GOCACHE="${GOCACHE:-$root/build/gocache}"
cd "$gopath/src/github.com/scheduler/scheduler"
unformatted="$(gofmt -l examples/go)"
[ -z "$unformatted" ] || { echo "gofmt would change: $unformatted" >&2; exit 1; }
go vet ./examples/go ./gen/go/...
go build -o "$out" ./examples/go

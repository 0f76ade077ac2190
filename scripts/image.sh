#!/usr/bin/env bash
# Builds the container image with Podman where no base image can be pulled, and proves it:
#   1. the release binary, built here (cargo build --release);
#   2. its root filesystem, assembled by scripts/image-rootfs.sh (what the Dockerfile's build
#      stage runs);
#   3. `podman build --build-arg ROOTFS=prebuilt`: the Dockerfile's last stage, FROM scratch,
#      on that filesystem;
#   4. the image's entrypoint run from its exported filesystem with chroot, as its user:
#      `--version` and `validate` of the config the image ships.
# (`podman run` fails in some sandboxes with "crun: setrlimit: Operation not permitted";
# chroot on the exported filesystem proves the same contents.) Needs podman and root.
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${IMAGE_TAG:-localhost/ratelimiter:dev}
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

command -v podman >/dev/null 2>&1 || { echo "podman is needed: apt-get install podman" >&2; exit 1; }
cargo build --release --locked --bin ratelimiter
bash scripts/image-rootfs.sh "$target/release/ratelimiter" "$work/rootfs"
podman build --quiet --build-arg ROOTFS=prebuilt -f "$PWD/Dockerfile" -t "$tag" "$work/rootfs"

cid=$(podman create "$tag")
mkdir "$work/exported"
podman export "$cid" | tar -x -C "$work/exported"
podman rm "$cid" >/dev/null

user=$(podman image inspect -f '{{.Config.User}}' "$tag")
entrypoint=$(podman image inspect -f '{{index .Config.Entrypoint 0}}' "$tag")
echo "image $tag: user $user, entrypoint $entrypoint, $(du -sh "$work/exported" | cut -f1)"
[ "$user" = "65532:65532" ] || { echo "the image runs as '$user', not 65532:65532" >&2; exit 1; }
for sh in bin/sh usr/bin/sh bin/bash; do
  [ ! -e "$work/exported/$sh" ] || { echo "$sh is in the image" >&2; exit 1; }
done
chroot --userspec="$user" "$work/exported" "$entrypoint" --version
chroot --userspec="$user" "$work/exported" "$entrypoint" validate /etc/ratelimiter
echo "image ok"

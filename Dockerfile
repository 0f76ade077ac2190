# syntax=docker/dockerfile:1
# The ratelimiter image: the release binary and the few libraries it links, on an empty
# base (no shell, no package manager), run as the nonroot user 65532.
#
#   docker build -t ratelimiter .                      # builds the binary in a Rust image
#   podman build --build-arg ROOTFS=prebuilt -f Dockerfile <rootfs dir>
#                                                      # from a root filesystem assembled by
#                                                      # scripts/image-rootfs.sh (scripts/image.sh)
# Both end in the same last stage, so the image is the same either way.
ARG RUST_IMAGE=docker.io/library/rust:1.95.0-slim-bookworm
ARG ROOTFS=source

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ratelimiter \
 && bash scripts/image-rootfs.sh target/release/ratelimiter /rootfs

# The root filesystem built above.
FROM build AS rootfs-source

# Or one assembled beforehand: the build context is that directory.
FROM scratch AS rootfs-prebuilt
COPY . /rootfs/

# A stage of this file, chosen by ROOTFS, not an image to pull.
# hadolint ignore=DL3006
FROM rootfs-${ROOTFS} AS rootfs

FROM scratch
COPY --from=rootfs /rootfs/ /
USER 65532:65532
# HTTP (POST /check, /metrics, /healthz, /readyz) and gRPC.
EXPOSE 8080 50051
ENTRYPOINT ["/usr/local/bin/ratelimiter"]
CMD ["--config=/etc/ratelimiter"]

# syntax=docker/dockerfile:1
# The relaycord image: one binary, no shell, non-root, read-only friendly.
#   docker build -t REGISTRY/relaycord:TAG .      (or: podman build …)
# The chart (helm/relaycord) runs it with `ingest`, `interactions` or `sink --name NAME`.

# The toolchain CI builds with; the workspace needs at least rust-version (Cargo.toml).
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# Production features only: zstd-stream gateway compression, without `dev` (the
# simulator, `relaycord dev`/`sim` and the nats-server child are for local runs).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p relaycord --no-default-features --features zstd \
    && install -D -m 0755 target/release/relaycord /out/relaycord

# glibc and libgcc only (TLS is rustls with built-in roots); same Debian release as
# the builder, so the binary's glibc matches.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/relaycord /usr/local/bin/relaycord
# Numeric, so Kubernetes' runAsNonRoot can check it; the chart runs as the same ids.
USER 10001:10001
EXPOSE 8080 9100 9101 9102
ENTRYPOINT ["/usr/local/bin/relaycord"]
CMD ["--help"]

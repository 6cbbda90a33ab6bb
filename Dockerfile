# syntax=docker/dockerfile:1
# The relaycord image: one binary, no shell, non-root, read-only friendly.
#   docker build -t REGISTRY/relaycord:TAG .      (or: podman build …)
# Released for linux/amd64 and linux/arm64 as ghcr.io/relaycord/relaycord by
# .github/workflows/release.yml. The chart (helm/relaycord) runs it with `ingest`,
# `interactions` or `sink --name NAME`.
#
# Base images are pinned by digest (the multi-platform index of the tag beside it), so a
# rebuild starts from the bytes that were reviewed. To move to a newer build, update tag
# and digest together: `docker buildx imagetools inspect IMAGE:TAG` prints the digest.
# The builder's toolchain must be at least the workspace's rust-version (Cargo.toml).

FROM docker.io/library/rust:1.95-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082 AS build
WORKDIR /src
COPY . .
# Production features only: zstd-stream gateway compression, without `dev` (the
# simulator, `relaycord dev`/`sim` and the nats-server child are for local runs).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p relaycord --no-default-features --features zstd \
    && install -D -m 0755 target/release/relaycord /out/relaycord

# Distroless cc: glibc and libgcc (same Debian release as the builder, so the binary's
# glibc matches) and Debian's CA bundle. TLS is rustls throughout, but not every client
# carries its own roots: the gateway websocket and AMQP use built-in Mozilla roots
# (webpki-roots), while NATS (async-nats, through rustls-native-certs) and HTTPS to
# Discord's REST API, webhooks and an OTLP collector (reqwest, through
# rustls-platform-verifier) read the system's: /etc/ssl/certs/ca-certificates.crt, which
# this base image has. A base without it fails those TLS connections (no roots). For a
# private CA, mount a bundle and set SSL_CERT_FILE, or for NATS use nats.tls (the chart's
# nats.tls.secretName).
FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
LABEL org.opencontainers.image.title="relaycord" \
      org.opencontainers.image.description="Discord events as durable streams on NATS JetStream" \
      org.opencontainers.image.source="https://github.com/relaycord/relaycord" \
      org.opencontainers.image.url="https://github.com/relaycord/relaycord" \
      org.opencontainers.image.documentation="https://github.com/relaycord/relaycord/blob/main/docs/deploy.md" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/relaycord /usr/local/bin/relaycord
# Numeric, so Kubernetes' runAsNonRoot can check it; the chart runs as the same ids.
USER 10001:10001
EXPOSE 8080 9100 9101 9102
ENTRYPOINT ["/usr/local/bin/relaycord"]
CMD ["--help"]

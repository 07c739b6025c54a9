# syntax=docker/dockerfile:1
# loopwatch container image:
#   docker build -t loopwatch:0.1.0 .
#   docker run --rm -p 9464:9464 -v ./loopwatch.toml:/etc/loopwatch/loopwatch.toml:ro \
#     -v loopwatch-data:/var/lib/loopwatch -e BASETEN_API_KEY loopwatch:0.1.0
# It listens on 0.0.0.0:9464 (LOOPWATCH__SERVER__LISTEN below, which wins over the file's
# server.listen; pass -e LOOPWATCH__SERVER__LISTEN=... to change it) and runs in
# /var/lib/loopwatch, so the default store.url ("sqlite://loopwatch.db") lands on the volume.
# The runtime image has no shell: an exec sink's command must be added to it.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binary is copied
# out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/loopwatch /out/loopwatch \
    && install -d -m 0755 /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="loopwatch" \
      org.opencontainers.image.description="Watches Baseten Loops checkpoints and sends signed webhooks when one is ready" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.source="https://github.com/loopwatch/loopwatch" \
      org.opencontainers.image.documentation="https://github.com/loopwatch/loopwatch/tree/main/docs"
COPY --from=build /out/loopwatch /usr/local/bin/loopwatch
# The state directory, owned by the nonroot user (65532) so a fresh volume is writable.
COPY --from=build --chown=65532:65532 /out/data /var/lib/loopwatch
USER 65532:65532
WORKDIR /var/lib/loopwatch
# Reachable by the kubelet's probes and by Prometheus; the loopback default suits a host.
ENV LOOPWATCH__SERVER__LISTEN=0.0.0.0:9464
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/loopwatch"]
CMD ["run", "-c", "/etc/loopwatch/loopwatch.toml"]

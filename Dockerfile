# syntax=docker/dockerfile:1
# loopwatch container image:
#   docker build -t loopwatch:0.1.0 .
#   docker run --rm -p 9464:9464 -v ./loopwatch.toml:/etc/loopwatch/loopwatch.toml:ro \
#     -v loopwatch-data:/var/lib/loopwatch -e BASETEN_API_KEY loopwatch:0.1.0
# The config must listen on 0.0.0.0:9464 and keep the database on the volume:
# store.url = "sqlite:///var/lib/loopwatch/loopwatch.db" (as deploy/kubernetes/overlays/sqlite sets it).
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
COPY --from=build /out/loopwatch /usr/local/bin/loopwatch
# The state directory, owned by the nonroot user (65532) so a fresh volume is writable.
COPY --from=build --chown=65532:65532 /out/data /var/lib/loopwatch
USER 65532:65532
WORKDIR /var/lib/loopwatch
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/loopwatch"]
CMD ["run", "-c", "/etc/loopwatch/loopwatch.toml"]

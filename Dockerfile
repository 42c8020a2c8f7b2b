# Multi-stage build: compile in the Rust image, run in a distroless image
# with no shell, no package manager, as a non-root user.
#
#   docker build -t gatehouse .
#   docker run --rm -p 8443:8443 -v /etc/gatehouse:/etc/gatehouse:ro gatehouse
#
# Mount the config, certificates and secrets read-only under /etc/gatehouse;
# give the authority (if embedded) a writable volume for its store.

FROM rust:1-bookworm AS build
WORKDIR /src
# The workspace: the binary at the root, its crates under crates/ (the
# [[bench]] targets must exist for the manifest to load).
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin gatehouse

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/gatehouse /usr/local/bin/gatehouse
USER nonroot:nonroot
EXPOSE 8443 9901
ENTRYPOINT ["/usr/local/bin/gatehouse"]
CMD ["run", "--config", "/etc/gatehouse/gatehouse.yaml"]

# whosin in a container: `docker build -t whosin .`, or the whole stack with
# `docker-compose up -d --build` (docker-compose.yml, docs/deploy.md).
# Works with the classic builder (docker-compose 1.29) and with BuildKit.

# ---- build ------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: a change to whosin's sources then
# rebuilds only whosin. Cargo.toml declares benches/parser.rs, so a stub of it
# must exist for cargo to read the manifest; lib.rs and main.rs are stubs too.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/parser.rs \
 && cargo build --release --locked \
 && rm -rf src benches target/release/whosin target/release/deps/whosin-* \
           target/release/deps/libwhosin-* target/release/.fingerprint/whosin-*

# The sources. The binary embeds config/whosin.yaml and files of assets/
# (include_str!), so both must be in the build context.
COPY src ./src
COPY benches ./benches
COPY assets ./assets
COPY config ./config
COPY deploy/docker/whosin.yaml ./deploy/docker/whosin.yaml
# The release profile keeps line tables (readable panics); objcopy compresses
# them. Then a smoke test: the binary runs and accepts the container config.
RUN cargo build --release --locked \
 && objcopy --compress-debug-sections=zlib target/release/whosin \
 && INFLUXDB_ORG=o INFLUXDB_BUCKET=b INFLUXDB_TOKEN=t \
    ./target/release/whosin check-config -c deploy/docker/whosin.yaml

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: https:// InfluxDB and mqtts:// brokers are verified against
# the system trust store. curl: only for the HEALTHCHECK below (a few MB;
# without it Docker could not tell a wedged whosin from a healthy one).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

# A fixed uid/gid, so a bind-mounted /data can be chowned to 10001 on the host.
RUN groupadd --system --gid 10001 whosin \
 && useradd --system --uid 10001 --gid whosin --home-dir /data --no-create-home \
            --shell /usr/sbin/nologin whosin \
 && mkdir -p /data /etc/whosin \
 && chown whosin:whosin /data

COPY --from=build /src/target/release/whosin /usr/local/bin/whosin
# Listens on udp 0.0.0.0:9997 and http 0.0.0.0:9842, journal in /data, sinks
# to the compose services; secrets come from ${INFLUXDB_TOKEN} etc. Mount a
# folder with your own whosin.yaml at /etc/whosin to replace it.
COPY deploy/docker/whosin.yaml /etc/whosin/whosin.yaml

VOLUME ["/data"]
WORKDIR /data
EXPOSE 9997/udp 9842/tcp
USER whosin

# /readyz is 200 when the UDP socket is bound and the journal is writable (a
# sink being down never makes it fail). Adjust the port if you change
# http.listen.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD curl -fsS -o /dev/null --max-time 4 http://127.0.0.1:9842/readyz || exit 1

ENTRYPOINT ["whosin"]
CMD ["run", "-c", "/etc/whosin/whosin.yaml"]

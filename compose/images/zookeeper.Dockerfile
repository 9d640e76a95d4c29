# ZooKeeper 3.8 from Debian's `zookeeper` package, FROM the local Debian base. zoo.cfg is written
# at start from the environment (see zookeeper-entrypoint); the harness runs its own command line.
ARG BASE=reporting/base:bookworm
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends zookeeper libslf4j-java \
    && rm -rf /var/lib/apt/lists/*
COPY compose/images/zookeeper-entrypoint /usr/local/bin/zookeeper-entrypoint
VOLUME /var/lib/zookeeper
ENTRYPOINT ["zookeeper-entrypoint"]

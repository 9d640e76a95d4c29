# PostgreSQL 15 from Debian's `postgresql-15` package, FROM the local Debian base. The cluster is
# made at first start from the environment (see postgres-entrypoint); the harness runs its own.
ARG BASE=reporting/base:bookworm
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/*
COPY compose/images/postgres-entrypoint /usr/local/bin/postgres-entrypoint
VOLUME /var/lib/postgresql/data
ENTRYPOINT ["postgres-entrypoint"]

# ActiveMQ Classic from Debian's `activemq` package. Built by scripts/containers FROM the local
# Debian base (no image registry needed). The broker's configuration is written at start from the
# environment (see activemq-entrypoint); the harness runs its own command line instead.
ARG BASE=reporting/base:bookworm
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends activemq \
       libxstream-java libjettison-java \
    && rm -rf /var/lib/apt/lists/*
COPY compose/images/activemq-entrypoint /usr/local/bin/activemq-entrypoint
COPY reporting/harness/templates/activemq.xml reporting/harness/templates/activemq-log4j.properties \
     /usr/local/share/activemq/
# Statistics replies (queue depth) need xstream and jettison on the broker's class path (<activemq.base>/lib).
RUN mkdir -p /var/lib/activemq/lib \
    && ln -s /usr/share/java/xstream.jar /usr/share/java/jettison.jar /var/lib/activemq/lib/
VOLUME /var/lib/activemq/data
ENTRYPOINT ["activemq-entrypoint"]

# Prometheus 2.42 from Debian's `prometheus` package, FROM the local Debian base. Its
# configuration, the alert rules and the targets are mounted by compose/monitoring.yml.
ARG BASE=reporting/base:bookworm
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/*
USER prometheus
VOLUME /var/lib/prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/var/lib/prometheus/metrics2", "--web.listen-address=127.0.0.1:9090"]

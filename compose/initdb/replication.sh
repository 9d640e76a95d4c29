#!/bin/sh
# Run once by the postgres image's entrypoint when the primary's data directory is created:
# replication connections from the standby, and commits that wait for its flush. The setting
# takes effect when the server starts for real, after the entrypoint's initialisation.
set -e
echo "host replication all all trust" >> "$PGDATA/pg_hba.conf"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "ALTER SYSTEM SET synchronous_standby_names = 'standby'"

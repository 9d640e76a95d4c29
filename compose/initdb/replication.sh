#!/bin/sh
# Run once by the postgres image's entrypoint when the primary's cluster is made: commits wait
# for the standby's flush (the entrypoint already lets the owner role replicate, with scram).
# The setting takes effect when the server starts for real, after the initialisation.
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "ALTER SYSTEM SET synchronous_standby_names = 'standby'"

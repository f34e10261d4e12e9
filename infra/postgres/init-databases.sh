#!/bin/bash
# Runs once, on the first start of an empty data volume (postgres' /docker-entrypoint-initdb.d):
# one database each for the Prefect server and the MLflow tracking server, so either can be
# dropped or backed up without touching the other.
set -e

for db in "$PREFECT_DB" "$MLFLOW_DB"; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres --set=db="$db" <<'EOSQL'
SELECT format('CREATE DATABASE %I', :'db')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
EOSQL
done

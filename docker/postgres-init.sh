#!/bin/bash
# Run once by the postgres image, on an empty data volume (docker-entrypoint-initdb.d):
# one database and one owner role each for the workbench store, Prefect and MLflow (all
# three keep an `alembic_version` table, so they must not share a database), and a role
# that may only read the workbench store (WORKBENCH_READONLY_DATABASE_URL, `workbench sql`).
# Passwords come from the environment that compose passes in from docker/.env.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v workbench_password="$WORKBENCH_DB_PASSWORD" \
  -v readonly_password="$WORKBENCH_READONLY_PASSWORD" \
  -v prefect_password="$PREFECT_DB_PASSWORD" \
  -v mlflow_password="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE workbench LOGIN PASSWORD :'workbench_password';
CREATE ROLE workbench_readonly LOGIN PASSWORD :'readonly_password';
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE workbench OWNER workbench;
CREATE DATABASE prefect OWNER prefect;
CREATE DATABASE mlflow OWNER mlflow;
-- Only each database's owner may connect to it (and the read-only role to the store).
REVOKE ALL ON DATABASE workbench, prefect, mlflow FROM PUBLIC;
GRANT CONNECT ON DATABASE workbench TO workbench_readonly;

-- Prefect's server searches with trigram indexes.
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- The store's tables do not exist yet (`workbench init` creates them as role workbench):
-- every table and view that role creates is readable by the read-only role.
\connect workbench
GRANT USAGE ON SCHEMA public TO workbench_readonly;
ALTER DEFAULT PRIVILEGES FOR ROLE workbench IN SCHEMA public GRANT SELECT ON TABLES TO workbench_readonly;
SQL

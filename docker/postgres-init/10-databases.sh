#!/usr/bin/env bash
# Runs once, when the postgres-data volume is empty (docker-entrypoint-initdb.d).
#
# One server, two databases, each owned by its own user:
#   AIRFLOW_DB_NAME  owned by AIRFLOW_DB_USER   Airflow's metadata
#   REVIEWS_DB_NAME  owned by REVIEWS_DB_USER   the shop's reviews, scores and queue
# plus REVIEWS_SCORER_USER, a LOGIN user in the `scorer` group role the schema
# migrations grant: Airflow's `reviews_db` connection logs in as it, so the
# nightly DAG can write scores and flags but never decide them. When
# REVIEWS_MODERATOR_PASSWORD is set (the stack sets it), REVIEWS_MODERATOR_USER
# is a LOGIN user in the `moderator` group role: the web page's login.
#
# The group roles are created here (as superuser) so that the reviews owner
# needs no CREATEROLE when airflow-init runs `moderation db init`; the
# migrations find them and only grant. Values go through psql variables (:"ident", :'literal'),
# never pasted into SQL text.
set -euo pipefail

: "${AIRFLOW_DB_NAME:?AIRFLOW_DB_NAME is not set}"
: "${AIRFLOW_DB_USER:?AIRFLOW_DB_USER is not set}"
: "${AIRFLOW_DB_PASSWORD:?AIRFLOW_DB_PASSWORD is not set}"
: "${REVIEWS_DB_NAME:?REVIEWS_DB_NAME is not set}"
: "${REVIEWS_DB_USER:?REVIEWS_DB_USER is not set}"
: "${REVIEWS_DB_PASSWORD:?REVIEWS_DB_PASSWORD is not set}"
: "${REVIEWS_SCORER_USER:?REVIEWS_SCORER_USER is not set}"
: "${REVIEWS_SCORER_PASSWORD:?REVIEWS_SCORER_PASSWORD is not set}"

psql --no-psqlrc -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v airflow_db="$AIRFLOW_DB_NAME" -v airflow_user="$AIRFLOW_DB_USER" -v airflow_password="$AIRFLOW_DB_PASSWORD" \
    -v reviews_db="$REVIEWS_DB_NAME" -v reviews_user="$REVIEWS_DB_USER" -v reviews_password="$REVIEWS_DB_PASSWORD" \
    -v scorer_user="$REVIEWS_SCORER_USER" -v scorer_password="$REVIEWS_SCORER_PASSWORD" <<'SQL'
CREATE ROLE :"airflow_user" LOGIN PASSWORD :'airflow_password';
CREATE DATABASE :"airflow_db" OWNER :"airflow_user" ENCODING 'UTF8' TEMPLATE template0;
REVOKE ALL ON DATABASE :"airflow_db" FROM PUBLIC;

CREATE ROLE :"reviews_user" LOGIN PASSWORD :'reviews_password';
CREATE DATABASE :"reviews_db" OWNER :"reviews_user" ENCODING 'UTF8' TEMPLATE template0;
REVOKE ALL ON DATABASE :"reviews_db" FROM PUBLIC;

SELECT 'CREATE ROLE moderator NOLOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'moderator') \gexec
SELECT 'CREATE ROLE scorer NOLOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'scorer') \gexec
CREATE ROLE :"scorer_user" LOGIN PASSWORD :'scorer_password' IN ROLE scorer;
GRANT CONNECT ON DATABASE :"reviews_db" TO moderator, scorer;
SQL

if [ -n "${REVIEWS_MODERATOR_PASSWORD:-}" ]; then
    : "${REVIEWS_MODERATOR_USER:?REVIEWS_MODERATOR_USER is not set}"
    psql --no-psqlrc -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
        -v moderator_user="$REVIEWS_MODERATOR_USER" -v moderator_password="$REVIEWS_MODERATOR_PASSWORD" <<'SQL'
CREATE ROLE :"moderator_user" LOGIN PASSWORD :'moderator_password' IN ROLE moderator;
SQL
    echo "postgres-init: created the web page's login ${REVIEWS_MODERATOR_USER} (role moderator)"
fi

echo "postgres-init: created databases ${AIRFLOW_DB_NAME}, ${REVIEWS_DB_NAME} and users ${AIRFLOW_DB_USER}, ${REVIEWS_DB_USER}, ${REVIEWS_SCORER_USER}"

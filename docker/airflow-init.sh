#!/usr/bin/env bash
# One-shot set-up run by the airflow-init service before any other Airflow
# service starts. Every step is idempotent: `docker compose up` runs it again
# each time, and a second run changes nothing but refreshed secrets.
#
#   1. refuse to go on with missing or placeholder secrets
#   2. airflow db migrate                      (Airflow metadata database)
#   3. moderation db init                      (schema migrations on the reviews database, as its owner)
#   4. moderation models register              (the shipped model; activated only when none is active,
#                                               so a model promoted by retraining stays active)
#   5. Airflow Connection reviews_db           (logs in as the scorer user: least privilege)
#   6. the admin login of the API server       (from _AIRFLOW_ADMIN_USERNAME/_AIRFLOW_ADMIN_PASSWORD only)
#   7. the scoring pool MODERATION_SCORING_POOL (default moderation_scoring; MODERATION_SCORING_POOL_SLOTS
#      slots, default 2, or 1 with MODERATION_SCORING_QUEUE: one GPU)
set -euo pipefail

SHIPPED_MODEL=/opt/moderation/models/ko-char-lstm-v3
REVIEWS_CONN_ID=reviews_db

die() {
    echo "airflow-init: ERROR: $*" >&2
    exit 1
}

require() {  # require NAME...: each must be set, non-empty and not a placeholder
    local name value
    for name in "$@"; do
        value="${!name:-}"
        [ -n "$value" ] || die "$name is empty. Set it in .env (copy .env.example and replace every change-me)."
        case "$value" in
            *change-me*|*changeme*) die "$name still holds the placeholder from .env.example; set a real value in .env." ;;
        esac
    done
}

require_url_safe() {  # passwords that end up inside database URLs
    local name
    for name in "$@"; do
        [[ "${!name}" =~ ^[A-Za-z0-9._~-]+$ ]] \
            || die "$name may only contain letters, digits and . _ ~ - (it is used inside a URL); e.g. openssl rand -hex 24"
    done
}

require _AIRFLOW_ADMIN_USERNAME _AIRFLOW_ADMIN_PASSWORD \
        AIRFLOW__CORE__FERNET_KEY AIRFLOW__API_AUTH__JWT_SECRET AIRFLOW__API__SECRET_KEY \
        AIRFLOW_DB_PASSWORD REVIEWS_DB_USER REVIEWS_DB_PASSWORD REVIEWS_DB_NAME \
        REVIEWS_SCORER_USER REVIEWS_SCORER_PASSWORD MODERATION_DB_URL \
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE
require_url_safe AIRFLOW_DB_PASSWORD REVIEWS_DB_PASSWORD
case "${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}" in
    *CeleryExecutor*)
        require CELERY_BROKER_PASSWORD
        require_url_safe CELERY_BROKER_PASSWORD
        python -c "import airflow.providers.celery" 2>/dev/null \
            || die "AIRFLOW__CORE__EXECUTOR=CeleryExecutor but the image has no Celery provider: build it with PROJECT_EXTRAS=celery (see docs/operations.md)"
        ;;
esac
[[ "$_AIRFLOW_ADMIN_USERNAME" =~ ^[A-Za-z0-9._-]+$ ]] \
    || die "_AIRFLOW_ADMIN_USERNAME may only contain letters, digits and . _ -"
# Routing of score_chunk (the gpu profile): a queue only Celery workers read, a pool created below.
SCORING_QUEUE="${MODERATION_SCORING_QUEUE:-}"
SCORING_POOL="${MODERATION_SCORING_POOL:-moderation_scoring}"
# How many chunks score at once: one per GPU worker (the gpu profile routes to a queue), else two.
if [ -n "$SCORING_QUEUE" ]; then DEFAULT_POOL_SLOTS=1; else DEFAULT_POOL_SLOTS=2; fi
SCORING_POOL_SLOTS="${MODERATION_SCORING_POOL_SLOTS:-$DEFAULT_POOL_SLOTS}"
if [ -n "$SCORING_QUEUE" ]; then
    [[ "$SCORING_QUEUE" =~ ^[A-Za-z0-9._-]+$ ]] \
        || die "MODERATION_SCORING_QUEUE may only contain letters, digits and . _ -"
    case "${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}" in
        *CeleryExecutor*) ;;
        *) die "MODERATION_SCORING_QUEUE=${SCORING_QUEUE} needs AIRFLOW__CORE__EXECUTOR=CeleryExecutor: only Celery workers (the gpu profile) read queues (see docs/operations.md)" ;;
    esac
fi
if [ -n "$SCORING_POOL" ]; then
    [[ "$SCORING_POOL" =~ ^[A-Za-z0-9._-]+$ ]] \
        || die "MODERATION_SCORING_POOL may only contain letters, digits and . _ -"
    [[ "$SCORING_POOL_SLOTS" =~ ^[1-9][0-9]*$ ]] \
        || die "MODERATION_SCORING_POOL_SLOTS must be a whole number of at least 1, got '${SCORING_POOL_SLOTS}'"
fi

echo "airflow-init: migrating the Airflow metadata database"
airflow db migrate

echo "airflow-init: migrating the reviews database (moderation db init)"
moderation db init --db "$MODERATION_DB_URL"

active="$(moderation models list --format json --db "$MODERATION_DB_URL" \
    | python -c 'import json, sys; print(next((m["version"] for m in json.load(sys.stdin) if m.get("active")), ""))')"
if [ -z "$active" ]; then
    echo "airflow-init: registering and activating the shipped model"
    moderation models register "$SHIPPED_MODEL" --activate --db "$MODERATION_DB_URL"
else
    echo "airflow-init: registering the shipped model; ${active} stays the active model"
    moderation models register "$SHIPPED_MODEL" --db "$MODERATION_DB_URL"
fi

echo "airflow-init: (re)creating the Airflow Connection ${REVIEWS_CONN_ID} as ${REVIEWS_SCORER_USER}"
airflow connections delete "$REVIEWS_CONN_ID" >/dev/null 2>&1 || true
airflow connections add "$REVIEWS_CONN_ID" \
    --conn-type postgres --conn-host postgres --conn-port 5432 \
    --conn-schema "$REVIEWS_DB_NAME" --conn-login "$REVIEWS_SCORER_USER" \
    --conn-password "$REVIEWS_SCORER_PASSWORD" \
    --conn-description "Reviews database (scorer role), written by airflow-init" >/dev/null

echo "airflow-init: writing the API server login of ${_AIRFLOW_ADMIN_USERNAME}"
# Airflow 3's simple auth manager reads user:password pairs from this JSON
# file; writing it here means the API server never generates (and logs) one.
umask 077
python - <<'PY'
import json
import os
from pathlib import Path

path = Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
path.parent.mkdir(parents=True, exist_ok=True)
partial = path.with_suffix(".partial")
partial.write_text(json.dumps({os.environ["_AIRFLOW_ADMIN_USERNAME"]: os.environ["_AIRFLOW_ADMIN_PASSWORD"]}) + "\n")
partial.chmod(0o600)
partial.replace(path)
PY

if [ -n "$SCORING_POOL" ]; then
    echo "airflow-init: pool ${SCORING_POOL} with ${SCORING_POOL_SLOTS} slot(s) for score_chunk"
    airflow pools set "$SCORING_POOL" "$SCORING_POOL_SLOTS" \
        "score_chunk of review_moderation_nightly (MODERATION_SCORING_POOL), written by airflow-init" >/dev/null
fi

echo "airflow-init: done"

#!/usr/bin/env bash
# The moderation loop after `make demo`: moderators decide flags, an operator
# retrains, the model is promoted or refused with its reason, and the next
# nightly run uses whichever version is active. Run from the repository root.
set -euo pipefail
export PATH="$PWD/.venv/bin:$PATH" TF_CPP_MIN_LOG_LEVEL=3
export MODERATION_DB_URL="sqlite:///$PWD/var/reviews.db"
export AIRFLOW_HOME="$PWD/var/airflow" AIRFLOW__CORE__DAGS_FOLDER="$PWD/dags" AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$PWD/var/airflow/airflow.db"
export AIRFLOW_CONN_REVIEWS_DB="$MODERATION_DB_URL" MODERATION_MODELS_DIR="$PWD/var/models"
step() { printf '\n### %s\n$ %s\n' "$1" "$2"; }

step "1. the queue after the nightly run" "moderation flagged --status pending --limit 5"
moderation flagged --status pending --limit 5

# 2. Moderators work through the queue. Here they are simulated by the review's
#    5-point stars (the demo's shop; see scripts/shop_reviews.py): confirm
#    flags on reviews with 1-2 stars, dismiss those with 4-5.
moderation flagged --status pending --format json --output var/queue.json --force
read -r confirm dismiss < <(python - <<'PY'
import json
rows = json.load(open("var/queue.json"))
print(",".join(str(r["review_id"]) for r in rows if r["rating"] is not None and r["rating"] <= 2),
      ",".join(str(r["review_id"]) for r in rows if r["rating"] is not None and r["rating"] >= 4))
PY
)
step "2a. confirm flags" "moderation decide <$(tr ',' '\n' <<<"$confirm" | wc -l) ids> --confirm --by kim"
moderation decide $(tr ',' ' ' <<<"$confirm") --confirm --by kim
step "2b. dismiss flags" "moderation decide <$(tr ',' '\n' <<<"$dismiss" | wc -l) ids> --dismiss --by lee --note 'not negative'"
moderation decide $(tr ',' ' ' <<<"$dismiss") --dismiss --by lee --note "not negative"
step "2c. what moderators observed" "moderation stats"
moderation stats

step "3. retraining, triggered by hand: fine-tunes the active model on decisions and 5-point stars (policy if_better)" \
     "airflow dags test review_model_retraining --conf '{\"epochs\": 2, \"min_new_labels\": 100}'"
airflow dags test review_model_retraining --conf '{"epochs": 2, "min_new_labels": 100}' >var/retraining.log 2>&1
grep -o 'retraining outcome: .*' var/retraining.log | head -1 | cut -c1-400
step "3b. model versions" "moderation models list"
moderation models list

step "3c. retraining a new network instead (no warm start), policy always; no new labels since 3, so min_new_labels 0" \
     "airflow dags test review_model_retraining --conf '{\"epochs\": 2, \"min_new_labels\": 0, \"warm_start\": false, \"learning_rate\": 0.002, \"promotion_policy\": \"always\"}'"
airflow dags test review_model_retraining \
    --conf '{"epochs": 2, "min_new_labels": 0, "warm_start": false, "learning_rate": 0.002, "promotion_policy": "always"}' >var/retraining2.log 2>&1
grep -o 'retraining outcome: .*' var/retraining2.log | head -1 | cut -c1-400
moderation models list

step "4. new reviews arrive; the next nightly run uses the active version" \
     "moderation reviews import tests/data/reviews_sample.parquet && airflow dags test review_moderation_nightly $(date -u +%F -d tomorrow)"
moderation reviews import tests/data/reviews_sample.parquet
airflow dags test review_moderation_nightly "$(date -u +%F -d tomorrow)" >var/nightly2.log 2>&1
grep -o 'run summary: .*' var/nightly2.log | head -1 | cut -c1-400

step "5. roll back to the shipped model" "moderation models activate ko-char-lstm-v3"
moderation models activate ko-char-lstm-v3
moderation models list

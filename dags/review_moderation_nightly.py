"""
### Nightly review moderation

Scores the reviews **ingested during the run's data interval** with the active
character-LSTM model and queues the likely-negative ones for moderators.

| task | does | XCom |
|---|---|---|
| `plan` | picks the active model and its threshold, counts the interval's reviews, cuts them into review-id chunks | the plan (model version, path, threshold, operating point, chunks, count) |
| `list_chunks` | hands the plan's chunks to the mapped task | the chunk list |
| `score_chunk` | one mapped task per chunk, in the pool `moderation_scoring`: loads the model once, writes scores to Parquet under `MODERATION_RUNS_URL/<run_id>/` | file URL and counts |
| `publish` | one transaction: upserts scores on (review, model version), queues new flags (each in its priority bucket), queues the audit sample, records the run; then deletes the run's files | the run summary |

**Idempotent:** nothing is written to the database before `publish` commits, and
re-running an interval gives the same tables; reviews a moderator already decided
keep their decision. An empty interval records a run with zero counts.

**Configuration**

* Connection `reviews_db` (e.g. env `AIRFLOW_CONN_REVIEWS_DB=postgresql://user@host/reviews`
  or `sqlite:////path/reviews.db`); without it, `MODERATION_DB_URL`, else the embedded SQLite file.
* Param `audit_sample`: how many of the run's unflagged scored reviews to queue as kind `audit`
  (moderators' decisions on them estimate recall honestly); empty: the setting
  `MODERATION_AUDIT_SAMPLE`, default 50; 0 turns sampling off. The sample is seeded by the run id,
  so a re-run picks the same reviews, and a review already queued is never touched.
* Params: `threshold` (override the model card's decision threshold with a number) or
  `operating_point` (a named threshold of the active model's card; not both), `chunk_size` (empty:
  the night in `scoring_slots` chunks, or a multiple of it for chunks over 500,000 reviews: every chunk is
  a task process that pays its start-up and model load), `scoring_slots`.
  Operating points: `default` is the card's threshold; `maybe`, `likely` and `very_likely` are the
  lowest thresholds that reached precision 0.6, 0.8 and 0.9 on the card's default domain's validation
  rows (at that domain's class mix; the card gives recall and false-positive rate beside each);
  `steam:likely` names another domain's point. `moderation models list` shows them. The run records in
  `scoring_runs.operating_point` the name it used (`default` without either Param, NULL with
  `threshold`). An unknown name, or both Params set, fails `plan` at once, before any scoring.
* Env: `MODERATION_NIGHTLY_SCHEDULE` (cron, UTC; default midnight, each run scores the
  24 hours before it), `MODERATION_NIGHTLY_CATCHUP` (default false; `airflow backfill create`
  works either way; `off` for no schedule: runs triggered by an upstream job only),
  `MODERATION_SCORING_QUEUE` / `MODERATION_SCORING_POOL` (the Celery queue and the Airflow pool of
  `score_chunk`, e.g. the GPU worker's queue and a one-slot pool; default: Airflow's queue and the pool
  `moderation_scoring`, which must exist: `airflow pools set moderation_scoring 2 "nightly scoring"`;
  its slots are how many chunks score at once, changeable without a redeploy),
  `MODERATION_RUNS_URL` (where chunk files go: a folder, default `MODERATION_HOME/runs`, or an
  object store URL such as `s3://aws_default@bucket/runs` that every worker reaches).

The same job without Airflow: `moderation score --start 2024-01-01 --end 2024-01-02`.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import Param, TriggerRule, dag, get_current_context, task

from moderation.airflow_support import TaskPhases, env_flag, nightly_timetable, scoring_task_routing

DEFAULT_SCORING_SLOTS = 2


@task
def plan(params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Choose the model, its threshold and operating point, and cut the interval into chunks; small dict for XCom."""
    phases = TaskPhases()
    from airflow.sdk.exceptions import AirflowFailException

    from moderation import airflow_support, pipeline
    from moderation.errors import OperatingPointError

    phases.mark("imports")
    context = get_current_context()
    start, end = airflow_support.interval_from_context(context)
    params = params or {}
    try:
        run_plan = pipeline.plan_run(airflow_support.reviews_db_url(), context["run_id"], start, end,
                                     chunk_size=int(params["chunk_size"]) if params.get("chunk_size") else None,
                                     scoring_slots=int(params.get("scoring_slots") or DEFAULT_SCORING_SLOTS),
                                     threshold=params.get("threshold"),
                                     operating_point=params.get("operating_point") or None)
    except OperatingPointError as exc:  # a wrong Param: retrying cannot help, fail now with the reason
        raise AirflowFailException(f"Params threshold/operating_point: {exc}") from None
    phases.mark("work")
    phases.log(rows=run_plan.reviews)
    return run_plan.to_xcom()


@task
def list_chunks(run_plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan's chunks as the list ``score_chunk`` is mapped over (may be empty)."""
    return list(run_plan["chunks"])


@task(**scoring_task_routing())
def score_chunk(run_plan: dict[str, Any], chunk: dict[str, Any]) -> dict[str, Any]:
    """Score one chunk into a Parquet file under the runs URL; a retry overwrites the same file."""
    phases = TaskPhases()
    from moderation import airflow_support, pipeline
    from moderation.scoring import current_plan, load_scorer

    # Imports what the plan runs on: Keras only for a large chunk (or where NumPy cannot score).
    scoring_plan = current_plan(rows=chunk.get("rows"))
    phases.mark("imports")
    scorer = load_scorer(run_plan["model"]["path"], plan=scoring_plan)
    phases.mark("model_load")
    result = pipeline.score_chunk(airflow_support.reviews_db_url(), chunk, run_plan["model"]["path"],
                                  airflow_support.run_folder(run_plan["run_id"]), scorer=scorer)
    phases.mark("work")
    phases.log(rows=result["rows"])
    return result


@task(trigger_rule=TriggerRule.NONE_FAILED)
def publish(run_plan: dict[str, Any], results: Any = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Publish every chunk and the audit sample in one transaction, then delete the chunk files; runs (with no results) when there were no chunks."""
    phases = TaskPhases()
    from moderation import airflow_support, pipeline

    phases.mark("imports")
    chosen = (params or {}).get("audit_sample")
    audit_sample = pipeline.audit_sample_setting() if chosen is None else int(chosen)
    summary = pipeline.publish(airflow_support.reviews_db_url(), run_plan, airflow_support.chunk_results(results),
                               remove_chunks=True, audit_sample=audit_sample, locate=airflow_support.runs_path)
    phases.mark("work")
    phases.log(rows=summary.get("reviews_read"))
    return summary


@dag(
    dag_id="review_moderation_nightly",
    doc_md=__doc__,
    description="Score the day's new reviews and queue likely-negative ones for moderators",
    schedule=nightly_timetable(),
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=env_flag("MODERATION_NIGHTLY_CATCHUP", False),
    max_active_runs=1,
    tags=["moderation", "reviews", "nightly"],
    default_args={
        "owner": "moderation",
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
    },
    params={
        "threshold": Param(None, type=["null", "number"], exclusiveMinimum=0, exclusiveMaximum=1,
                           description="Flag when score >= this; empty uses the active model card's threshold"),
        "operating_point": Param(None, type=["null", "string"], maxLength=64,
                                 description="Flag at a named operating point of the active model's card instead: "
                                             "default (the card's threshold), maybe / likely / very_likely "
                                             "(precision 0.6 / 0.8 / 0.9 on the default domain's validation "
                                             "rows) or DOMAIN:NAME such as steam:likely. Leave threshold empty "
                                             "when you set this."),
        "audit_sample": Param(None, type=["null", "integer"], minimum=0, maximum=10_000,
                              description="Unflagged reviews to queue as audit samples for honest recall "
                                          "estimates; empty uses MODERATION_AUDIT_SAMPLE (default 50), "
                                          "0 turns sampling off"),
        "chunk_size": Param(None, type=["null", "integer"], minimum=100, maximum=1_000_000,
                            description="Reviews per mapped scoring task; empty: the night in scoring_slots "
                                        "chunks (more for chunks over 500,000 reviews)"),
        "scoring_slots": Param(DEFAULT_SCORING_SLOTS, type="integer", minimum=1, maximum=256,
                               description="Chunks scored at once: the moderation_scoring pool's slots"),
    },
)
def review_moderation_nightly() -> None:
    planned = plan()
    scored = score_chunk.partial(run_plan=planned).expand(chunk=list_chunks(planned))
    publish(planned, scored)


review_moderation_nightly()

"""``make bench``: how fast scoring, the nightly run and training are, measured in one go.

Four sections, run on the same machine and the same corpus sample so that
their ratios mean something (docs/performance.md explains each one):

1. ``model``: model-only throughput, the seeds' way (every text padded to 100,
   one ``predict``) against the project's :class:`~moderation.scoring.Scorer`
   at several batch sizes, with a check that both give the same scores.
2. ``pipeline``: :func:`moderation.pipeline.run_nightly` end to end on SQLite
   and PostgreSQL, stage by stage, each run in a fresh process for its peak RSS.
3. ``scaling``: reviews/s and peak RSS against the number of reviews, one DB.
4. ``training``: one epoch, length-bucketed batches against fixed-100 padding.

Tables go to stdout, progress to stderr, everything to a JSON file. Nothing
here asserts a timing: figures depend on the machine, so they are recorded
with the machine's facts and judged by a person.

Run from a checkout (``make bench`` = ``.venv/bin/python benchmarks/bench.py``):
the benchmark is tooling beside the package, not part of the installed wheel.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import psutil
from tabulate import tabulate

from moderation import config

#: The checkout this file belongs to (corpus beside it, docs/bench.json, git state).
REPO_ROOT = Path(__file__).resolve().parents[1]

SECTIONS = ("model", "pipeline", "scaling", "training")
DB_KINDS = ("sqlite", "postgresql")
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SAMPLE_SEED = 20240301
#: The one day every benchmark review is ingested in; the nightly run covers it.
BENCH_DAY = datetime(2024, 3, 1, tzinfo=timezone.utc)
#: The seeds' recipe: cut/pad every review to 100 characters, predict in batches of 1024.
SEED_MAX_LEN = 100
SEED_BATCH = 1024
AGREEMENT_TOLERANCE = 1e-5
LOAD_BATCH = 20_000

#: Defaults of a full run and of ``--quick`` (tiny, for tests and trying it out).
FULL = {"model_reviews": 100_000, "sizes": [100_000, 1_000_000], "train_rows": 50_000, "val_rows": 10_000,
        "train_epochs": 6}
QUICK = {"model_reviews": 1_500, "sizes": [400], "scaling_sizes": [100, 400],
         "train_rows": 800, "val_rows": 300, "train_epochs": 1}

T = TypeVar("T")


class BenchError(RuntimeError):
    """The benchmark could not measure what it promised (not a slow result: a wrong one)."""


@dataclass
class Settings:
    """One benchmark run, resolved from the command line."""

    model_dir: Path
    corpus: Path
    out: Path
    sections: list[str]
    sizes: list[int]
    scaling_sizes: list[int]
    scaling_db: str
    model_reviews: int
    batch_sizes: list[int]
    repeats: int
    train_rows: int
    val_rows: int
    train_epochs: int
    pg_url: str | None  # None: SQLite only
    chunk_size: int
    quick: bool = False
    db_kinds: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.db_kinds = ["sqlite"] + (["postgresql"] if self.pg_url else [])


# --- command line ------------------------------------------------------------

def _int_list(value: str) -> list[int]:
    try:
        numbers = [int(v.replace("_", "")) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None
    if not numbers or any(n < 1 for n in numbers):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {value!r}")
    return numbers


def _sections(value: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"sections are {', '.join(SECTIONS)}; got {value!r}")
    return [s for s in SECTIONS if s in chosen]


def build_parser() -> argparse.ArgumentParser:
    from moderation.pipeline import DEFAULT_CHUNK_SIZE

    parser = argparse.ArgumentParser(prog="benchmarks/bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped model)")
    parser.add_argument("--corpus", type=Path, default=None, help="reviews Parquet (default: ../shared/data/ko_reviews.parquet)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: docs/bench.json)")
    parser.add_argument("--sections", type=_sections, default=list(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    parser.add_argument("--sizes", type=_int_list, default=None, help="pipeline sizes (default 100000,1000000)")
    parser.add_argument("--scaling-sizes", type=_int_list, default=None,
                        help="scaling sizes (default: --sizes plus a tenth of the smallest)")
    parser.add_argument("--scaling-db", choices=DB_KINDS, default=None,
                        help="DB of the scaling section (default postgresql, sqlite with --no-pg)")
    parser.add_argument("--model-reviews", type=int, default=None, help="reviews of the model section (default 100000)")
    parser.add_argument("--batch-sizes", type=_int_list, default=[256, 512, 1024, 2048], help="Scorer batch sizes to try")
    parser.add_argument("--repeats", type=int, default=1, help="model section: best of this many timed runs")
    parser.add_argument("--train-rows", type=int, default=None, help="training rows of the training section (default 50000)")
    parser.add_argument("--val-rows", type=int, default=None, help="validation rows of the training section (default 10000)")
    parser.add_argument("--train-epochs", type=int, default=None, help="epochs per recipe in the training section (default 6)")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="nightly chunk size")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server: a scratch database is created there and dropped")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the benchmark works, measures nothing")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)  # one pipeline run, see _child_main
    return parser


def resolve_settings(args: argparse.Namespace) -> Settings:
    """Explicit options win, then ``--quick``'s tiny defaults, then the full ones."""
    preset = {**FULL, **QUICK} if args.quick else FULL

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return value if value is not None else preset.get(name)

    sizes = sorted(set(pick("sizes")))
    scaling = args.scaling_sizes or (QUICK["scaling_sizes"] if args.quick and args.sizes is None
                                     else [max(1, sizes[0] // 10), *sizes])
    pg_url = None if args.no_pg else args.pg_url
    return Settings(
        model_dir=(args.model or config.default_model_dir()).resolve(),
        corpus=(args.corpus or REPO_ROOT.parent / "shared" / "data" / "ko_reviews.parquet").resolve(),
        out=(args.out or REPO_ROOT / "docs" / "bench.json").resolve(),
        sections=args.sections,
        sizes=sizes,
        scaling_sizes=sorted(set(scaling)),
        scaling_db=args.scaling_db or ("postgresql" if pg_url else "sqlite"),
        model_reviews=pick("model_reviews"),
        batch_sizes=args.batch_sizes,
        repeats=max(1, args.repeats),
        train_rows=pick("train_rows"),
        val_rows=pick("val_rows"),
        train_epochs=max(1, pick("train_epochs")),
        pg_url=pg_url,
        chunk_size=args.chunk_size,
        quick=args.quick,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen sections; exit 1 when the scores disagree or a measurement failed."""
    args = build_parser().parse_args(argv)
    if args.child is not None:
        return _child_main(args.child)
    settings = resolve_settings(args)
    if settings.scaling_db == "postgresql" and not settings.pg_url:
        build_parser().error("--scaling-db postgresql needs PostgreSQL (drop --no-pg)")
    return run(settings)


def run(settings: Settings) -> int:
    """All sections in order; the JSON is written even when one fails, with the error in it."""
    if not settings.corpus.is_file():
        raise SystemExit(f"corpus not found: {settings.corpus} (give one with --corpus)")
    _check_model(settings.model_dir)
    results: dict[str, Any] = {"machine": machine_facts(settings), "settings": _settings_json(settings)}
    _progress(f"benchmark: sections {', '.join(settings.sections)}; results to {settings.out}")
    frame = load_corpus(settings.corpus)
    try:
        if "model" in settings.sections:
            results["model"] = bench_model(settings, frame)
            print(model_table(results["model"]), flush=True)
            _require_agreement(results["model"]["agreement"])
        measured: dict[tuple[str, int], dict[str, Any]] = {}
        if "pipeline" in settings.sections:
            results["pipeline"] = bench_pipeline(settings, frame, measured)
            print(pipeline_table(results["pipeline"]), flush=True)
        if "scaling" in settings.sections:
            results["scaling"] = bench_scaling(settings, frame, measured)
            print(scaling_table(results["scaling"]), flush=True)
        if "training" in settings.sections:
            results["training"] = bench_training(settings)
            print(training_table(results["training"]), flush=True)
    except BenchError as exc:
        results["error"] = str(exc)
        print(f"BENCHMARK FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except BaseException as exc:  # record it, then let it through with its traceback
        results["error"] = f"{exc.__class__.__name__}: {exc}"
        raise
    finally:
        results["machine"]["load_average_end"] = _load_average()
        write_json(settings.out, results)
        _progress(f"wrote {settings.out}")
    return 0


def _check_model(directory: Path) -> None:
    """Refuse a broken or outdated model before minutes of work, not in the middle of them."""
    from moderation.errors import ModelBundleError
    from moderation.model import verify_bundle

    try:
        verify_bundle(directory)
    except ModelBundleError as exc:
        raise SystemExit(f"cannot benchmark model {directory}: {exc} (choose one with --model)") from None


def _settings_json(settings: Settings) -> dict[str, Any]:
    """The settings as JSON, any password in the PostgreSQL URL hidden."""
    values = _jsonable(asdict(settings))
    if settings.pg_url:
        from sqlalchemy.engine import make_url

        values["pg_url"] = make_url(settings.pg_url).render_as_string(hide_password=True)
    return values


# --- machine and data --------------------------------------------------------

def machine_facts(settings: Settings) -> dict[str, Any]:
    """What a reader needs to judge the figures: hardware, load, versions, code."""
    facts: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "load_average_start": _load_average(),
        "python": platform.python_version(),
        "sqlite": __import__("sqlite3").sqlite_version,
        "postgresql": _pg_server_version(settings.pg_url) if settings.pg_url else None,
        **git_state(),
    }
    for package in ("tensorflow", "tensorflow-cpu", "keras", "numpy", "pandas", "pyarrow", "sqlalchemy", "psycopg"):
        try:
            facts[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    load = facts["load_average_start"][0] if facts["load_average_start"] else 0.0
    if facts["usable_cpus"] and load > 0.5 * facts["usable_cpus"]:
        facts["warning"] = f"the machine was busy at the start (1-min load {load:.1f}): timings are not reliable"
        _progress("WARNING: " + facts["warning"])
    return facts


def _cpu_model() -> str | None:
    """The CPU's name: Linux says it in /proc/cpuinfo only (psutil does not report it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gib() -> float:
    return round(psutil.virtual_memory().total / 2**30, 1)


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def git_state(checkout: Path = REPO_ROOT) -> dict[str, Any]:
    """The checkout's commit and whether its working tree differs from it (commit None outside git)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()

    try:
        return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None}


def _pg_server_version(pg_url: str) -> str:
    from sqlalchemy import text

    engine = _pg_admin_engine(pg_url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar_one())
    except Exception as exc:  # any driver error: say which server, then stop
        raise SystemExit(f"PostgreSQL at {engine.url.render_as_string(hide_password=True)} is not reachable "
                         f"({exc.__class__.__name__}); start it or pass --no-pg") from None
    finally:
        engine.dispose()


def load_corpus(path: Path) -> pd.DataFrame:
    """The corpus columns the benchmark uses, texts as plain Python strings."""
    frame = pd.read_parquet(path)
    missing = {"review_id", "text"} - set(frame.columns)
    if missing:
        raise SystemExit(f"{path} lacks column(s) {', '.join(sorted(missing))}")
    for column, default in (("item_id", 0), ("rating", None), ("created", None)):
        if column not in frame.columns:
            frame[column] = default
    frame["text"] = frame["text"].astype(object)
    return frame[["review_id", "item_id", "created", "rating", "text"]]


def sample_corpus(frame: pd.DataFrame, n: int, seed: int = SAMPLE_SEED) -> pd.DataFrame:
    """A fixed random sample; beyond the corpus size, with replacement and new review ids 1..n.

    The same ``n`` always gives the same rows, so the model section and the
    pipeline section see the same 100,000 reviews.
    """
    if n <= len(frame):
        return frame.sample(n=n, random_state=seed).reset_index(drop=True)
    sample = frame.sample(n=n, replace=True, random_state=seed).reset_index(drop=True)
    sample["review_id"] = np.arange(1, n + 1, dtype=np.int64)
    return sample


# --- 1. model-only throughput ------------------------------------------------

def bench_model(settings: Settings, frame: pd.DataFrame) -> dict[str, Any]:
    """Seeds' fixed padding vs the Scorer on one sample; cleaning and encoding timed apart."""
    from moderation.model import load_bundle
    from moderation.numpy_lstm import ENGINE_ENV
    from moderation.scoring import Scorer, configure_inference_threads, current_plan, default_workers, seed_style_predict

    workers = default_workers()
    configure_inference_threads(workers)  # TensorFlow's threads as a scoring task on Keras sets them
    bundle = load_bundle(settings.model_dir)
    keras_plan = current_plan({**os.environ, ENGINE_ENV: "keras"})
    texts = sample_corpus(frame, settings.model_reviews)["text"].tolist()
    series = pd.Series(texts, dtype=object)
    n = len(texts)
    _progress(f"model: {n:,} reviews, warming up")
    warm = texts[: min(n, SEED_BATCH + 500)]  # one full and one partial batch: every trace happens here
    seed_style_predict(bundle, warm, SEED_MAX_LEN, SEED_BATCH)
    Scorer(bundle, workers=workers).score_texts(warm)
    for fused in (True, False):
        Scorer(bundle, workers=workers, fused=fused, plan=keras_plan).score_texts(warm)
    prep, cleaned_lengths = time_preparation(bundle, series)

    _progress("model: seeds' way (pad to 100, predict batch 1024)")
    seed_seconds, seed_scores = best_of(settings.repeats, lambda: seed_style_predict(bundle, texts, SEED_MAX_LEN, SEED_BATCH))
    seeds_here = _throughput_row("seeds (pad 100)", SEED_BATCH, n, seed_seconds,
                                 prep["clean_seconds"], prep["encode_seconds_seeds"])
    _progress("model: seeds' way again, in a fresh process with TensorFlow's default threading")
    default_seconds, default_scores = run_seeds_child(settings, texts)
    seeds_default = _throughput_row("seeds (pad 100), TF default threads", SEED_BATCH, n, default_seconds,
                                    prep["clean_seconds"], prep["encode_seconds_seeds"])
    seeds = min(seeds_here, seeds_default, key=lambda r: r["seconds"])  # the stronger baseline
    scorer_rows: list[dict[str, Any]] = []
    scorer_scores: dict[str, np.ndarray] = {}
    forward_kinds = {}
    for batch_size in settings.batch_sizes:
        _progress(f"model: Scorer, batch {batch_size}")
        scorer = Scorer(bundle, batch_size=batch_size, workers=workers)
        forward_kinds["Scorer"] = scorer.forward_kind
        seconds, result = best_of(settings.repeats, lambda: scorer.score_texts(series))
        scorer_scores[f"Scorer, batch {batch_size}"] = result.score
        scorer_rows.append(_throughput_row("Scorer", batch_size, n, seconds,
                                           prep["clean_seconds"], prep["encode_seconds_scorer"]))
    best = max(scorer_rows, key=lambda r: r["reviews_per_s"])
    # The same Scorer on Keras (TensorFlow's fused LSTM kernel, then the Keras layers): what each pass adds.
    keras_rows = []
    for method, fused in (("Scorer, fused LSTM kernel", True), ("Scorer, Keras layers", False)):
        _progress(f"model: {method}, batch {best['batch_size']}")
        on_keras = Scorer(bundle, batch_size=best["batch_size"], workers=workers, fused=fused, plan=keras_plan)
        forward_kinds[method] = on_keras.forward_kind
        seconds, result = best_of(settings.repeats, lambda: on_keras.score_texts(series))
        scorer_scores[f"{method}, batch {best['batch_size']}"] = result.score
        keras_rows.append(_throughput_row(method, best["batch_size"], n, seconds,
                                          prep["clean_seconds"], prep["encode_seconds_scorer"]))
    fused_row, layers_row = keras_rows
    for row in [seeds_here, seeds_default, *scorer_rows, fused_row, layers_row]:
        row["vs_seeds"] = round(row["reviews_per_s"] / seeds["reviews_per_s"], 3)
    return {
        "reviews": n,
        "model_version": bundle.version,
        "model_max_len": bundle.card.max_len,
        "repeats": settings.repeats,
        "threads": _tf_threads(workers),
        "max_batch_chars": scorer.max_batch_chars,
        "preparation": prep,
        "seeds": seeds,
        "seeds_variants": [seeds_here, seeds_default],
        "scorer": scorer_rows,
        "scorer_fused_kernel": fused_row,
        "scorer_keras_layers": layers_row,
        "forward": forward_kinds,
        "best_scorer": best,
        "ratio_best_scorer_to_seeds": best["vs_seeds"],
        "agreement": check_agreement(cleaned_lengths, [seed_scores, default_scores], scorer_scores,
                                     bundle.card.max_len),
    }


def _tf_threads(workers: int) -> dict[str, Any]:
    """The threading both methods ran under (one process, so the same for both)."""
    import tensorflow as tf

    return {"scorer_workers": workers,
            "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()}


def time_preparation(bundle: Any, series: pd.Series) -> tuple[dict[str, Any], np.ndarray]:
    """Cleaning and encoding timed on their own, as each method does them; also each cleaned length."""
    from moderation.text import clean_texts, skip_reasons

    started = time.perf_counter()
    cleaned = clean_texts(series)
    scorable = skip_reasons(series, cleaned).isna().to_numpy()
    clean_seconds = time.perf_counter() - started
    started = time.perf_counter()
    bundle.vocab.encode(cleaned[scorable].tolist(), bundle.card.max_len)
    encode_scorer = time.perf_counter() - started
    started = time.perf_counter()
    bundle.vocab.encode(cleaned.fillna("").tolist(), SEED_MAX_LEN).padded(width=SEED_MAX_LEN)
    encode_seeds = time.perf_counter() - started
    lengths = cleaned.fillna("").str.len().to_numpy(dtype=np.int64)
    return {
        "clean_seconds": round(clean_seconds, 4),
        "encode_seconds_scorer": round(encode_scorer, 4),
        "encode_seconds_seeds": round(encode_seeds, 4),
        "mean_cleaned_length": round(float(lengths.mean()), 2) if len(lengths) else 0.0,
    }, lengths


def _throughput_row(method: str, batch_size: int, n: int, seconds: float, clean: float, encode: float) -> dict[str, Any]:
    """One method's figures; model time is the total minus the separately timed cleaning and encoding."""
    return {
        "method": method,
        "batch_size": batch_size,
        "seconds": round(seconds, 4),
        "reviews_per_s": round(n / max(seconds, 1e-9), 1),
        "clean_seconds": clean,
        "encode_seconds": encode,
        "model_seconds": round(max(0.0, seconds - clean - encode), 4),
    }


def best_of(repeats: int, work: Callable[[], T]) -> tuple[float, T]:
    """Shortest wall time of ``repeats`` runs (the least disturbed by other load) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result  # type: ignore[return-value]


def check_agreement(cleaned_lengths: np.ndarray, seed_scores: np.ndarray | Sequence[np.ndarray],
                    scorer_scores: dict[Any, np.ndarray], max_len: int = SEED_MAX_LEN) -> dict[str, Any]:
    """Both methods must give one score per review where they see the same characters.

    The seeds keep the last 100 characters and the Scorer the last
    ``max_len`` (150), so only texts no longer than both are comparable; rows
    the Scorer skips (nothing left to score) are left out too. Padding is
    masked, so on those rows any difference is a bug, not a rounding matter.
    """
    comparable = cleaned_lengths <= min(SEED_MAX_LEN, max_len)
    for scores in scorer_scores.values():
        comparable &= ~np.isnan(scores)
    baselines = [seed_scores] if isinstance(seed_scores, np.ndarray) else list(seed_scores)
    worst = 0.0
    for scores in scorer_scores.values():
        for baseline in baselines:
            if comparable.any():
                worst = max(worst, float(np.max(np.abs(scores[comparable] - baseline[comparable]))))
    rows = int(comparable.sum())
    return {
        "passed": bool(rows > 0 and worst <= AGREEMENT_TOLERANCE),
        "rows_compared": rows,
        "rows_total": int(len(cleaned_lengths)),
        "rows_longer_than_100": int((cleaned_lengths > SEED_MAX_LEN).sum()),
        "max_abs_diff": worst,
        "tolerance": AGREEMENT_TOLERANCE,
        "scorers_checked": [str(k) for k in scorer_scores],
    }


def _require_agreement(agreement: dict[str, Any]) -> None:
    if not agreement["passed"]:
        raise BenchError(
            f"the Scorer and the seeds' way disagree: max |difference| {agreement['max_abs_diff']:.3g} over "
            f"{agreement['rows_compared']:,} comparable rows (tolerance {AGREEMENT_TOLERANCE:g}); "
            f"throughput figures of a wrong scorer mean nothing"
        )


# --- 2./3. the nightly pipeline ----------------------------------------------

def bench_pipeline(settings: Settings, frame: pd.DataFrame,
                   measured: dict[tuple[str, int], dict[str, Any]]) -> list[dict[str, Any]]:
    """Every size on every DB; results also land in ``measured`` for the scaling section."""
    rows = []
    for size in settings.sizes:
        for kind in settings.db_kinds:
            measured[(kind, size)] = pipeline_case(settings, frame, kind, size)
            rows.append(measured[(kind, size)])
    return rows


def bench_scaling(settings: Settings, frame: pd.DataFrame,
                  measured: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    """Reviews/s and peak RSS against size on one DB, reusing the pipeline section's runs."""
    rows = []
    for size in settings.scaling_sizes:
        key = (settings.scaling_db, size)
        if key not in measured:
            measured[key] = pipeline_case(settings, frame, *key)
        case = measured[key]
        rows.append({k: case[k] for k in ("db", "reviews", "reviews_per_s", "wall_seconds", "peak_rss_mb")})
    return {"db": settings.scaling_db, "rows": rows}


def pipeline_case(settings: Settings, frame: pd.DataFrame, kind: str, size: int) -> dict[str, Any]:
    """Fresh DB, load ``size`` reviews (timed apart), then one nightly run in a fresh process."""
    sample = sample_corpus(frame, size)
    with scratch_database(kind, settings.pg_url) as url, tempfile.TemporaryDirectory(prefix="moderation-bench-") as work:
        _progress(f"pipeline: {kind}, {size:,} reviews: loading")
        load_seconds = load_reviews(url, sample, settings.model_dir)
        _progress(f"pipeline: {kind}, {size:,} reviews: nightly run ({load_seconds:.1f}s to load)")
        result = run_child(url, Path(work), f"bench-{kind}-{size}", settings.chunk_size)
    if result["reviews_read"] != size:
        raise BenchError(f"{kind}: the nightly run read {result['reviews_read']} reviews, {size} were loaded")
    return {"db": kind, "reviews": size, "sampled_with_replacement": size > len(frame),
            "load_seconds": round(load_seconds, 3), **result,
            "reviews_per_s": round(size / max(result["wall_seconds"], 1e-9), 1)}


@contextmanager
def scratch_database(kind: str, pg_url: str | None) -> Iterator[str]:
    """URL of an empty database, removed afterwards: a temp SQLite file or a PostgreSQL scratch DB."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="moderation-bench-db-") as folder:
            yield f"sqlite:///{Path(folder) / 'bench.db'}"
        return
    if not pg_url:
        raise BenchError("PostgreSQL was asked for but --no-pg was given")
    from sqlalchemy import text

    admin = _pg_admin_engine(pg_url)
    name = f"moderation_bench_{uuid.uuid4().hex[:12]}"  # generated: safe to quote into DDL
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _pg_admin_engine(pg_url: str) -> Any:
    from moderation import db

    return db.make_engine(pg_url).execution_options(isolation_level="AUTOCOMMIT")


def load_reviews(url: str, sample: pd.DataFrame, model_dir: Path) -> float:
    """Schema, the model registered as active, and the reviews bulk-inserted; returns the seconds.

    Not the importer: loading is set-up here, not a measured stage, and bulk
    inserts (COPY on PostgreSQL) keep it short. ``ingested_at`` spreads the
    reviews over :data:`BENCH_DAY`. PostgreSQL gets ANALYZE, as autovacuum
    would have run after such a load before the nightly job.
    """
    from sqlalchemy import text

    from moderation import db
    from moderation.registry import register_model

    started = time.perf_counter()
    engine = db.make_engine(url)
    try:
        db.init_schema(engine)
        register_model(engine, model_dir, activate=True)
        with engine.begin() as conn:
            for batch in _review_batches(sample):
                if conn.dialect.name == "postgresql":
                    _copy_reviews(conn, batch)
                else:
                    conn.execute(db.reviews.insert(), [dict(zip(_REVIEW_COLUMNS, row)) for row in batch])
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("ANALYZE reviews"))
    finally:
        engine.dispose()
    return time.perf_counter() - started


_REVIEW_COLUMNS = ("review_id", "product_id", "rating", "text", "created_at", "ingested_at")


def _review_batches(sample: pd.DataFrame) -> Iterator[list[tuple[Any, ...]]]:
    """Rows of ``reviews`` as tuples, :data:`LOAD_BATCH` at a time."""
    n = len(sample)
    created = pd.to_datetime(sample["created"], utc=True, errors="coerce")
    seconds = np.arange(n) * (86_399.0 / max(n, 1))
    for start in range(0, n, LOAD_BATCH):
        part = slice(start, start + LOAD_BATCH)
        rows = []
        for rid, item, rating, text, made, offset in zip(
            sample["review_id"].iloc[part].tolist(), sample["item_id"].iloc[part].tolist(),
            sample["rating"].iloc[part].tolist(), sample["text"].iloc[part].tolist(),
            created.iloc[part].tolist(), seconds[part].tolist(),
        ):
            rows.append((int(rid), int(item or 0), None if pd.isna(rating) else int(rating),
                         None if text is None else str(text).replace("\x00", ""),
                         None if pd.isna(made) else made.to_pydatetime(), BENCH_DAY + timedelta(seconds=offset)))
        yield rows


def _copy_reviews(conn: Any, rows: list[tuple[Any, ...]]) -> None:
    from moderation import db

    driver = conn.connection.driver_connection
    with driver.cursor() as cursor, cursor.copy(
        f"COPY {db.reviews.name} ({', '.join(_REVIEW_COLUMNS)}) FROM STDIN"
    ) as copy:
        for row in rows:
            copy.write_row(row)


def seed_reviews_child(url: str, corpus: Path, size: int, model_dir: Path) -> float:
    """:func:`load_reviews` of ``size`` sampled reviews in a fresh interpreter; returns its seconds.

    In a child so that the schema is the one of the package on the child's
    path: an earlier checkout's (``PYTHONPATH``) for a before/after pair.
    """
    with tempfile.TemporaryDirectory(prefix="moderation-bench-seed-") as tmp:
        spec = {"task": "seed", "db_url": url, "corpus": str(corpus), "size": size, "model_dir": str(model_dir),
                "result": str(Path(tmp) / "result.json")}
        return float(_run_child_spec(spec, Path(tmp), f"seeding {size:,} reviews")["seconds"])


def empty_scoring_tables_child(url: str, tables: Sequence[str]) -> None:
    """:func:`empty_scoring_tables` in a fresh interpreter (the schema upgraded to the child's package)."""
    with tempfile.TemporaryDirectory(prefix="moderation-bench-empty-") as tmp:
        spec = {"task": "empty_scoring_tables", "db_url": url, "tables": list(tables),
                "result": str(Path(tmp) / "result.json")}
        _run_child_spec(spec, Path(tmp), "emptying the scoring tables")


def empty_scoring_tables(url: str, tables: Sequence[str]) -> None:
    """Every review unscored again, the statistics fresh, as before the first run (schema upgraded to this code's)."""
    from sqlalchemy import text

    from moderation import db, migrations

    unknown = set(tables) - set(db.metadata.tables)
    if unknown:
        raise BenchError(f"not tables of the package's schema: {', '.join(sorted(unknown))}")
    engine = db.make_engine(url)
    quoted = [engine.dialect.identifier_preparer.quote(name) for name in tables]
    try:
        migrations.upgrade(engine)  # a database kept by an earlier release's run
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(quoted)}"))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    finally:
        engine.dispose()


def run_child(url: str, work: Path, run_id: str, chunk_size: int) -> dict[str, Any]:
    """One nightly run in a fresh interpreter, so its peak RSS is its own."""
    spec = {"db_url": url, "start": BENCH_DAY.isoformat(), "end": (BENCH_DAY + timedelta(days=1)).isoformat(),
            "run_id": run_id, "chunk_size": chunk_size, "work_dir": str(work / "chunks"),
            "result": str(work / "result.json")}
    return _run_child_spec(spec, work, f"nightly run {run_id}")


def run_seeds_child(settings: Settings, texts: list[str]) -> tuple[float, np.ndarray]:
    """The seeds' way in a fresh interpreter left at TensorFlow's default threading: (best seconds, scores)."""
    with tempfile.TemporaryDirectory(prefix="moderation-bench-seeds-") as tmp:
        work = Path(tmp)
        pd.DataFrame({"text": texts}).to_parquet(work / "texts.parquet", index=False)
        spec = {"task": "seeds", "model_dir": str(settings.model_dir), "texts": str(work / "texts.parquet"),
                "repeats": settings.repeats, "scores": str(work / "scores.npy"), "result": str(work / "result.json")}
        result = _run_child_spec(spec, work, "seeds' way with default threading")
        return float(result["seconds"]), np.load(spec["scores"])


def _run_child_spec(spec: dict[str, Any], work: Path, what: str) -> dict[str, Any]:
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not Path(spec["result"]).is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise BenchError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return json.loads(Path(spec["result"]).read_text(encoding="utf-8"))


def _child_main(spec_path: Path) -> int:
    """Inside a fresh process: the seeds' way, or the nightly job with its stages timed."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    if spec.get("task") == "seeds":
        return _seeds_child(spec)
    if spec.get("task") == "training":
        return _training_child(spec)
    if spec.get("task") == "seed":
        seconds = load_reviews(spec["db_url"], sample_corpus(load_corpus(Path(spec["corpus"])), spec["size"]),
                               Path(spec["model_dir"]))
        Path(spec["result"]).write_text(json.dumps({"seconds": seconds}), encoding="utf-8")
        return 0
    if spec.get("task") == "empty_scoring_tables":
        empty_scoring_tables(spec["db_url"], spec["tables"])
        Path(spec["result"]).write_text(json.dumps({}), encoding="utf-8")
        return 0
    return _nightly_child(spec)


def _seeds_child(spec: dict[str, Any]) -> int:
    from moderation.model import load_bundle
    from moderation.scoring import seed_style_predict

    bundle = load_bundle(spec["model_dir"])
    texts = pd.read_parquet(spec["texts"])["text"].tolist()
    seed_style_predict(bundle, texts[: SEED_BATCH + 500], SEED_MAX_LEN, SEED_BATCH)  # warm-up, as in-process
    seconds, scores = best_of(spec["repeats"], lambda: seed_style_predict(bundle, texts, SEED_MAX_LEN, SEED_BATCH))
    np.save(spec["scores"], scores)
    Path(spec["result"]).write_text(json.dumps({"seconds": seconds}), encoding="utf-8")
    return 0


def _training_child(spec: dict[str, Any]) -> int:
    result = measure_training(Path(spec["corpus"]), spec["train_rows"], spec["val_rows"], spec["epochs"])
    Path(spec["result"]).write_text(json.dumps(_jsonable(result)), encoding="utf-8")
    return 0


def _nightly_child(spec: dict[str, Any]) -> int:
    """Import TensorFlow (timed apart), run the nightly job, time its stages."""
    started = time.perf_counter()
    import keras  # noqa: F401  - the import is a fixed cost of every task, reported on its own

    import_seconds = time.perf_counter() - started
    from moderation import model, pipeline

    clock = StageClock()
    with clock.wrap(pipeline, "plan_run"), clock.wrap(model, "load_bundle"), \
            clock.wrap(pipeline, "score_chunk"), clock.wrap(pipeline, "publish"):
        started = time.perf_counter()
        summary = pipeline.run_nightly(
            spec["db_url"], datetime.fromisoformat(spec["start"]), datetime.fromisoformat(spec["end"]),
            run_id=spec["run_id"], chunk_size=spec["chunk_size"], work_dir=Path(spec["work_dir"]))
        wall = time.perf_counter() - started
    result = stage_summary(clock, summary, wall)
    result.update(import_seconds=round(import_seconds, 3), peak_rss_mb=peak_rss_mb())
    Path(spec["result"]).write_text(json.dumps(result), encoding="utf-8")
    return 0


class StageClock:
    """Times calls of module functions by wrapping them, keeping each call's result.

    ``run_nightly`` looks its stages up in its module at call time, so the
    wrapped functions are the ones it runs: the job measured is the real one.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.results: dict[str, list[Any]] = {}

    @contextmanager
    def wrap(self, owner: Any, name: str) -> Iterator[None]:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = original(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            self.results.setdefault(name, []).append(result)
            return result

        setattr(owner, name, timed)
        try:
            yield
        finally:
            setattr(owner, name, original)


def stage_summary(clock: StageClock, summary: dict[str, Any], wall: float) -> dict[str, Any]:
    """Wall time per stage; chunk time split into reading and the rest (clean, score, write Parquet)."""
    chunks = [{"index": c["index"], "rows": c["rows"], "read_seconds": c["read_seconds"],
               "score_seconds": round(c["seconds"] - c["read_seconds"], 3)}
              for c in clock.results.get("score_chunk", [])]
    stages = {
        "plan_seconds": clock.seconds.get("plan_run", 0.0),
        "model_load_seconds": clock.seconds.get("load_bundle", 0.0),
        "read_seconds": sum(c["read_seconds"] for c in chunks),
        "score_seconds": sum(c["score_seconds"] for c in chunks),
        "publish_seconds": clock.seconds.get("publish", 0.0),
    }
    chunk_wall = clock.seconds.get("score_chunk", 0.0)
    stages["other_seconds"] = max(0.0, wall - stages["plan_seconds"] - stages["model_load_seconds"]
                                  - chunk_wall - stages["publish_seconds"])
    return {
        "wall_seconds": round(wall, 3),
        **{k: round(v, 3) for k, v in stages.items()},
        "publish_seconds_inside": summary.get("publish_seconds"),
        "chunks": chunks,
        "reviews_read": summary["reviews_read"],
        "reviews_scored": summary["reviews_scored"],
        "reviews_flagged": summary["reviews_flagged"],
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux's VmHWM; psutil reports only the current RSS), in MiB."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 1024), 1)


# --- 4. training throughput --------------------------------------------------

def bench_training(settings: Settings) -> dict[str, Any]:
    """The training comparison, in a fresh process at TensorFlow's default threading.

    The model section sets one thread per operation for inference; training
    wants TensorFlow's defaults (one thread per operation slowed the seeds'
    fixed-100 epoch from 27 s to 43 s), and threading is fixed per process.
    """
    _progress(f"training: {settings.train_epochs} epoch(s) per recipe, in a fresh process")
    with tempfile.TemporaryDirectory(prefix="moderation-bench-training-") as tmp:
        work = Path(tmp)
        spec = {"task": "training", "corpus": str(settings.corpus), "train_rows": settings.train_rows,
                "val_rows": settings.val_rows, "epochs": settings.train_epochs, "result": str(work / "result.json")}
        return _run_child_spec(spec, work, "training comparison")


def measure_training(corpus: Path, train_rows: int, val_rows: int, epochs: int) -> dict[str, Any]:
    """The same network on the same rows for ``epochs`` epochs: per-batch padding vs every row padded to 100."""
    from moderation.data import load_labelled, split_by_group
    from moderation.training import BucketedBatches, TrainingConfig, class_weights
    from moderation.vocab import CharVocab

    cfg = TrainingConfig()
    split = split_by_group(load_labelled(corpus), cfg.validation_fraction, cfg.test_fraction, cfg.seed)
    train_text, y_train = _labelled_sample(split.train, train_rows)
    val_text, y_val = _labelled_sample(split.validation, val_rows)
    vocab = CharVocab.build(train_text, min_freq=cfg.min_char_freq)
    weights = class_weights(y_train)
    fixed = _fixed_width_batches()
    _progress(f"training: {len(train_text):,} rows, {len(val_text):,} validation rows, batch {cfg.batch_size}, "
              f"{epochs} epoch(s) per recipe")
    variants = []
    for name, make in (
        ("bucketed (project)", lambda texts, y, bs, w, shuffle: BucketedBatches(
            vocab.encode(texts, cfg.max_len), y, bs, w, shuffle=shuffle, seed=cfg.seed)),
        ("fixed 100 (seeds)", lambda texts, y, bs, w, shuffle: fixed(
            vocab.encode(texts, SEED_MAX_LEN), y, bs, w, shuffle=shuffle, seed=cfg.seed)),
    ):
        _progress(f"training: {name}")
        train = make(train_text, y_train, cfg.batch_size, weights, True)
        val = make(val_text, y_val, 2048, None, False)
        variants.append({"recipe": name, **train_epochs(train, val, vocab.size, cfg, epochs)})
    bucketed, seeds = variants
    return {
        "train_rows": len(train_text), "validation_rows": len(val_text), "batch_size": cfg.batch_size,
        "learning_rate": cfg.learning_rate, "class_weights": True, "vocab_size": vocab.size, "epochs": epochs,
        "variants": variants,
        "ratio_bucketed_to_fixed": _ratio(bucketed["samples_per_s"], seeds["samples_per_s"]),
        "ratio_bucketed_to_fixed_steady": _ratio(bucketed["steady_samples_per_s"], seeds["steady_samples_per_s"]),
        "auc_difference_same_epochs": round(bucketed["val_auc"] - seeds["val_auc"], 4),
        "at_equal_time": equal_time_comparison(bucketed["per_epoch"], seeds["per_epoch"]),
    }


def equal_time_comparison(bucketed: list[dict[str, Any]], seeds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each seeds' epoch: the bucketed recipe's validation AUC after the training time the seeds' had used.

    ``bucketed_still_training`` is False where the bucketed run had already
    finished its epochs by then: that row compares against its last epoch.
    """
    rows = []
    for seed_epoch in seeds:
        within = [e for e in bucketed if e["elapsed_seconds"] <= seed_epoch["elapsed_seconds"]]
        rows.append({"seconds": seed_epoch["elapsed_seconds"], "fixed_epochs": seed_epoch["epoch"],
                     "fixed_val_auc": seed_epoch["val_auc"],
                     "bucketed_epochs": within[-1]["epoch"] if within else 0,
                     "bucketed_val_auc": within[-1]["val_auc"] if within else None,
                     "bucketed_still_training": seed_epoch["elapsed_seconds"] < bucketed[-1]["elapsed_seconds"]})
    return rows


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator and denominator else None


def _labelled_sample(frame: pd.DataFrame, n: int) -> tuple[list[str], np.ndarray]:
    """Up to ``n`` fixed random rows with text left after cleaning: (cleaned texts, labels)."""
    from moderation.text import clean_texts

    if len(frame) > n:
        frame = frame.sample(n=n, random_state=SAMPLE_SEED)
    cleaned = clean_texts(frame["text"]).fillna("")
    keep = (cleaned.str.len() > 0).to_numpy()
    return cleaned[keep].tolist(), frame["label"].to_numpy(np.float32)[keep]


def train_epochs(train: Any, val: Any, vocab_size: int, cfg: Any, epochs: int) -> dict[str, Any]:
    """A freshly built model (same seed, so same initial weights), ``epochs`` timed epochs, validation after each."""
    import keras

    from moderation.model import build_model

    keras.utils.set_random_seed(cfg.seed)
    model = build_model(vocab_size, cfg.embedding_dim, cfg.learning_rate)
    sizes = [len(rows) for rows in train.batches]  # the first epoch's batches, in the order fit reads them
    widths = [train[i][0].shape[1] for i in range(len(train))]
    per_epoch, steady, elapsed = [], None, 0.0
    for epoch in range(1, epochs + 1):
        clock = _batch_clock()
        started = time.perf_counter()
        model.fit(train, epochs=1, verbose=0, callbacks=[clock])  # reshuffles its batches at the epoch's end
        seconds = time.perf_counter() - started
        elapsed += seconds
        if epoch == 1:
            steady = _steady_rate(clock.ends, sizes)
        scores = model.evaluate(val, verbose=0, return_dict=True)  # not timed
        per_epoch.append({"epoch": epoch, "seconds": round(seconds, 3), "elapsed_seconds": round(elapsed, 3),
                          "samples_per_s": round(sum(sizes) / max(seconds, 1e-9), 1),
                          "val_accuracy": round(float(scores["accuracy"]), 4),
                          "val_auc": round(float(scores["auc"]), 4), "val_loss": round(float(scores["loss"]), 4)})
    last = per_epoch[-1]
    return {
        "seconds": round(elapsed, 3),
        "samples_per_s": round(sum(sizes) * epochs / max(elapsed, 1e-9), 1),
        "steady_samples_per_s": steady,
        "mean_padded_width": round(float(np.mean(widths)), 1),
        "val_accuracy": last["val_accuracy"],
        "val_auc": last["val_auc"],
        "val_loss": last["val_loss"],
        "per_epoch": per_epoch,
    }


def _steady_rate(ends: list[float], sizes: list[int]) -> float | None:
    """Samples/s after the first batches, where graph tracing happens; None if the epoch is too short."""
    skip = min(10, len(ends) // 5)
    if skip < 1 or len(ends) <= skip:
        return None
    return round(sum(sizes[skip : len(ends)]) / max(ends[-1] - ends[skip - 1], 1e-9), 1)


def _fixed_width_batches() -> Any:
    """The seeds' feeding as a :class:`BucketedBatches` variant: random order, every row padded to 100.

    Built on demand because ``moderation.training`` imports Keras, which the
    pipeline's child processes must not pay for before their clock starts.
    """
    from moderation.training import BucketedBatches

    class FixedWidthBatches(BucketedBatches):
        def _make_batches(self) -> None:
            n = len(self.encoded)
            order = self.rng.permutation(n) if self.shuffle else np.arange(n)
            self.batches = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]

        def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
            rows = self.batches[index]
            x = self.encoded.padded(rows, width=SEED_MAX_LEN)
            if self.sample_weight is None:
                return x, self.labels[rows]
            return x, self.labels[rows], self.sample_weight[rows]

    return FixedWidthBatches


def _batch_clock() -> Any:
    import keras

    class BatchClock(keras.callbacks.Callback):
        """When each training batch ended."""

        def __init__(self) -> None:
            super().__init__()
            self.ends: list[float] = []

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self.ends.append(time.perf_counter())

    return BatchClock()


# --- output ------------------------------------------------------------------

def format_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An aligned text table: text left, numbers right."""
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) for i in range(len(headers))]
    align = ["right" if num else "left" for num in numeric]
    return "\n".join(["", title, tabulate(cells, headers, tablefmt="simple", colalign=align, disable_numparse=True)])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"


def model_table(section: dict[str, Any]) -> str:
    rows = [[r["method"], r["batch_size"], r["reviews_per_s"], r["seconds"], r["clean_seconds"],
             r["encode_seconds"], r["model_seconds"], f"{r['vs_seeds']:.2f}x"]
            for r in [*section.get("seeds_variants", [section["seeds"]]), *section["scorer"],
                      *[section[key] for key in ("scorer_fused_kernel", "scorer_keras_layers") if key in section]]]
    table = format_table(
        f"1. Model-only throughput: {section['reviews']:,} corpus reviews, model {section['model_version']} "
        f"(best of {section['repeats']}; model s = total - clean - encode)",
        ["method", "batch", "reviews/s", "total s", "clean s", "encode s", "model s", "vs seeds"], rows)
    best, agreement = section["best_scorer"], section["agreement"]
    verdict = "PASSED" if agreement["passed"] else "FAILED"
    return (f"{table}\nbest Scorer: batch {best['batch_size']}, {best['vs_seeds']:.2f}x the seeds' reviews/s "
            f"(against the faster seeds row: {section['seeds']['method']})\n"
            f"forward pass: {', '.join(f'{k} = {v}' for k, v in section.get('forward', {}).items())}; "
            f"threads: {section.get('threads')}\n"
            f"agreement {verdict}: {agreement['rows_compared']:,} of {agreement['rows_total']:,} rows compared "
            f"(cleaned length <= {SEED_MAX_LEN}, scorable; {agreement['rows_longer_than_100']:,} longer), "
            f"max |diff| {agreement['max_abs_diff']:.2e} (tolerance {agreement['tolerance']:g})")


def pipeline_table(rows: list[dict[str, Any]]) -> str:
    body = [[r["db"], r["reviews"], r["reviews_per_s"], r["wall_seconds"], r["plan_seconds"], r["model_load_seconds"],
             r["read_seconds"], r["score_seconds"], r["publish_seconds"], r["other_seconds"], len(r["chunks"]),
             r["peak_rss_mb"], r["import_seconds"], r["load_seconds"]] for r in rows]
    return format_table(
        "2. Nightly pipeline end to end (run_nightly over one day; TF import and loading not counted)",
        ["db", "reviews", "reviews/s", "wall s", "plan s", "model load s", "read s", "score s", "publish s",
         "other s", "chunks", "peak RSS MiB", "TF import s", "load s"], body)


def scaling_table(section: dict[str, Any]) -> str:
    body = [[r["reviews"], r["reviews_per_s"], r["wall_seconds"], r["peak_rss_mb"]] for r in section["rows"]]
    return format_table(f"3. Scaling of the nightly pipeline on {section['db']}",
                        ["reviews", "reviews/s", "wall s", "peak RSS MiB"], body)


def training_table(section: dict[str, Any]) -> str:
    body = [[v["recipe"], e["epoch"], v["mean_padded_width"], e["seconds"], e["elapsed_seconds"], e["samples_per_s"],
             e["val_accuracy"], e["val_auc"]] for v in section["variants"] for e in v["per_epoch"]]
    table = format_table(
        f"4. Training: {section['train_rows']:,} rows, batch {section['batch_size']}, {section['epochs']} epoch(s) "
        f"per recipe, validation on {section['validation_rows']:,} rows after each",
        ["recipe", "epoch", "mean width", "epoch s", "elapsed s", "samples/s", "val accuracy", "val AUC"], body)
    steady = section["ratio_bucketed_to_fixed_steady"]
    lines = [table, f"bucketed / fixed 100: {section['ratio_bucketed_to_fixed']:.2f}x samples/s over all epochs"
             + (f", {steady:.2f}x steady in the first" if steady else "")
             + f"; val AUC after the same epochs {section['auc_difference_same_epochs']:+.4f}"]
    for row in section["at_equal_time"]:
        bucketed = "n/a" if row["bucketed_val_auc"] is None else f"{row['bucketed_val_auc']:.4f}"
        stopped = "" if row.get("bucketed_still_training", True) else " (its last epoch: it had finished)"
        lines.append(f"at {row['seconds']:.1f} s of training: fixed 100 after {row['fixed_epochs']} epoch(s) "
                     f"AUC {row['fixed_val_auc']:.4f}, bucketed after {row['bucketed_epochs']} epoch(s) AUC {bucketed}"
                     f"{stopped}")
    return "\n".join(lines)


def write_json(path: Path, results: dict[str, Any]) -> None:
    """Atomically, so a crashed run never leaves half a file where the last good one was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(_jsonable(results), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)


def _jsonable(value: Any) -> Any:
    """Paths as strings, NumPy scalars and arrays as numbers and lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _progress(message: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())

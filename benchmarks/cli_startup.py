"""Whole-process scoring from the command line: ``moderation score-file`` against the seeds' predict script.

``make bench`` compares the models inside one warm process. A person (or a
cron job) runs a command: the process starts, imports, loads the model,
reads the file, scores, writes. This measures that, in fresh processes, on
the same file and machine in one run:

* ``moderation score-file SAMPLE OUT`` (the product's command), its wall
  time from ``exec`` to exit;
* the seeds' way as one script: import TensorFlow, load the model, clean,
  pad every text to 100 characters, ``model.predict`` in batches of 1,024
  (the benchmark's baseline everywhere, kinder to the seeds than their own
  code), write the scores;
* the same script calling ``model.predict`` without a batch size, as seed
  001's ``sentiment_predict`` does (Keras predicts 32 rows at a time);
* ``moderation predict`` on one text (start-up alone, nearly no scoring);
* where a process's time goes: the interpreter with nothing imported, the
  imports of ``moderation score-file`` (which scores on NumPy and never
  imports TensorFlow on a machine without an accelerator), TensorFlow/Keras
  (which the seeds' script imports), and ``score-file``'s model load, each
  timed in a fresh process.

Each process runs ``--repeats`` times (default 3); the best time counts, the
others are kept in the JSON. The sample is ``--texts`` reviews (default
218,361) drawn from the corpus with the benchmark's fixed seed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bench  # benchmarks/bench.py: corpus sample, machine facts, tables

REPO_ROOT = bench.REPO_ROOT
MODERATION_BIN = Path(sys.executable).with_name("moderation")

#: The seeds' script as seed 001's ``sentiment_predict`` calls it: ``model.predict`` with its default batch.
AS_WRITTEN = "seeds' predict script, predict's default batch (32)"

#: Fresh-process probes: what each one imports or does, timed inside the process.
PROBES = {
    "score-file imports without TensorFlow": "import moderation.cli, moderation.data, moderation.scoring",
    "TensorFlow + Keras import (the seeds' script; score-file on Keras' plan)": "import keras",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks/cli_startup.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=218_361, help="reviews in the scored file")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each process; the best counts")
    parser.add_argument("--corpus", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "ko_reviews.parquet")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped model)")
    parser.add_argument("--checkout", type=Path, default=None,
                        help="time another checkout's package (e.g. a worktree of an earlier commit, for a "
                             "before/after pair on one machine); default: this one")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "bench_cli.json")
    parser.add_argument("--seeds-child", nargs=4, metavar=("MODEL", "TEXTS", "SCORES", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--load-child", metavar="MODEL", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seeds_child:
        return seeds_script(*args.seeds_child)
    if args.load_child:
        return load_child(args.load_child)
    from moderation import config

    model_dir = (args.model or config.default_model_dir()).resolve()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    checkout = (args.checkout or REPO_ROOT).resolve()
    if args.checkout is not None:  # its package first on the path of every process timed here
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(checkout), env.get("PYTHONPATH")]))
    results: dict[str, Any] = {"machine": bench.machine_facts(argparse.Namespace(pg_url=None)),
                               "settings": {"texts": args.texts, "repeats": args.repeats, "model_dir": str(model_dir),
                                            "checkout": str(checkout),
                                            "checkout_commit": bench.git_state(checkout)["git_commit"]}}
    with tempfile.TemporaryDirectory(prefix="moderation-cli-bench-") as tmp:
        work = Path(tmp)
        sample = work / "texts.parquet"
        bench.sample_corpus(bench.load_corpus(args.corpus), args.texts)[["review_id", "text"]].to_parquet(
            sample, index=False)
        runs = {
            "moderation score-file": [str(MODERATION_BIN), "score-file", str(sample), str(work / "scored.parquet"),
                                      "--model", str(model_dir), "--force"],
            "seeds' predict script": [sys.executable, __file__, "--seeds-child", str(model_dir), str(sample),
                                      str(work / "seeds.parquet"), str(bench.SEED_BATCH)],
            AS_WRITTEN: [sys.executable, __file__, "--seeds-child", str(model_dir), str(sample),
                         str(work / "seeds.parquet"), "default"],
            "moderation predict (one text)": [str(MODERATION_BIN), "predict", "배송이 너무 늦어요",
                                              "--model", str(model_dir)],
        }
        wall = {name: [timed_process(command, env) for _ in range(args.repeats)] for name, command in runs.items()}
        phases = {"interpreter start-up and exit (whole process)":
                  [timed_process([sys.executable, "-c", "pass"], env) for _ in range(args.repeats)]}
        phases.update({name: [probe(code, env) for _ in range(args.repeats)] for name, code in PROBES.items()})
        phases["model load (after the imports)"] = [
            timed_inner([sys.executable, __file__, "--load-child", str(model_dir)], env) for _ in range(args.repeats)]
    results["wall_seconds"] = wall
    results["phase_seconds"] = phases
    best = {name: min(times) for name, times in wall.items()}
    results["best"] = best
    results["score_file_speedup_vs_seeds"] = round(best["seeds' predict script"] / best["moderation score-file"], 2)
    results["score_file_speedup_vs_seeds_as_written"] = round(best[AS_WRITTEN] / best["moderation score-file"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    rows = [[name, min(times), args.texts if "file" in name or "seeds" in name else 1,
             round(args.texts / min(times), 0) if "file" in name or "seeds" in name else None]
            for name, times in wall.items()]
    print(bench.format_table(f"Whole processes, best of {args.repeats} (score-file is "
                             f"{results['score_file_speedup_vs_seeds']}x the seeds' script in batches of "
                             f"{bench.SEED_BATCH}, {results['score_file_speedup_vs_seeds_as_written']}x as written)",
                             ["process", "wall s", "texts", "texts/s"], rows))
    print(bench.format_table("Where a process's start-up goes (fresh process each, best of the runs)",
                             ["phase", "s"], [[name, min(times)] for name, times in phases.items()]))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def timed_process(command: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one process, exec to exit; a failure stops the benchmark."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return round(seconds, 3)


def probe(code: str, env: dict[str, str]) -> float:
    """Seconds ``code`` takes inside a fresh interpreter (its start-up not counted)."""
    script = f"import time\n_t = time.perf_counter()\n{code}\nprint(time.perf_counter() - _t)"
    return timed_inner([sys.executable, "-c", script], env)


def timed_inner(command: list[str], env: dict[str, str]) -> float:
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise SystemExit(f"probe failed: {done.stderr[-2000:]}")
    return round(float(done.stdout.strip().splitlines()[-1]), 3)


def load_child(model_dir: str) -> int:
    """Import what ``score-file`` imports (Keras only where its plan is Keras'), then time :func:`load_scorer` alone."""
    from moderation import scoring

    if hasattr(scoring, "numpy_plan"):
        scoring.current_plan()  # imports what the plan runs on
    else:  # a checkout from before NumPy scoring: its plan always imports Keras
        import keras  # noqa: F401

    from moderation.scoring import load_scorer

    started = time.perf_counter()
    load_scorer(model_dir)
    print(time.perf_counter() - started)
    return 0


def seeds_script(model_dir: str, texts_path: str, scores_path: str, batch: str) -> int:
    """The seeds' predict script, whole: import, load, clean, pad to 100, predict, write.

    ``batch`` "default" calls ``model.predict`` without a batch size, as the
    seeds' ``sentiment_predict`` does (Keras then predicts 32 rows at a time).
    """
    import keras  # noqa: F401
    import pandas as pd

    from moderation.model import load_bundle
    from moderation.scoring import seed_style_predict

    bundle = load_bundle(model_dir)
    texts = pd.read_parquet(texts_path)["text"].tolist()
    scores = seed_style_predict(bundle, texts, bench.SEED_MAX_LEN, None if batch == "default" else int(batch))
    pd.DataFrame({"score": scores}).to_parquet(scores_path, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Model commands: train, evaluate, score-file, predict."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

from moderation import config
from moderation.cli.options import (db_option, input_file, int_at_least, output_file, positive_float,
                                    progress_option, threshold_choice)
from moderation.errors import InputDataError, ModelBundleError
from moderation.progress import progress, wanted


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train a model directory from a labelled file")
    train.add_argument("--data", required=True, type=Path, help="Parquet/CSV/TSV with text and rating or label")
    train.add_argument("--out", required=True, type=Path,
                       help="new model directory to write, e.g. models/NAME (its name is the version)")
    train.add_argument("--replace", action="store_true",
                       help="overwrite --out when it already holds a model that is not registered")
    train.add_argument("--epochs", type=int_at_least(1), default=8)
    train.add_argument("--batch-size", type=int_at_least(1), default=256)
    train.add_argument("--learning-rate", type=positive_float, default=2e-3)
    train.add_argument("--max-len", type=int_at_least(1), default=150)
    train.add_argument("--patience", type=int_at_least(0), default=2)
    train.add_argument("--max-train-rows", type=int_at_least(1), default=None,
                       help="sample the training split (quick runs)")
    train.add_argument("--seed", type=int_at_least(0), default=13)
    train.add_argument("--init-from", type=Path, default=None, metavar="MODEL_DIR",
                       help="fine-tune this model directory (warm start): keep its vocabulary and network, "
                            "train further on --data; characters it has never seen are reported")
    db_option(train)
    progress_option(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="metrics of a model on a labelled file")
    evaluate.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped model)")
    evaluate.add_argument("--data", required=True, type=Path)
    evaluate.add_argument("--balanced", action="store_true", help="down-sample to equal classes first")
    progress_option(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    score = commands.add_parser("score-file", help="score a Parquet/CSV/TSV file with a text column")
    score.add_argument("input", type=Path)
    score.add_argument("output", type=Path, help="output .parquet or .csv (by extension)")
    score.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped model)")
    score.add_argument("--batch-size", type=int_at_least(1), default=None,
                       help="rows per batch (default: 1024 on CPU, 8192 on a GPU; see MODERATION_SCORING_BATCH_ROWS)")
    threshold_choice(score, "override the card's decision threshold (between 0 and 1)")
    score.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    progress_option(score)
    score.set_defaults(handler=_score_file)

    predict = commands.add_parser("predict", help="score texts given on the command line")
    predict.add_argument("texts", nargs="+")
    predict.add_argument("--model", type=Path, default=None)
    predict.add_argument("--trace", action="store_true", help="also show the score over growing word prefixes")
    threshold_choice(predict, "call a review NEGATIVE at this score instead of the card's threshold")
    predict.set_defaults(handler=_predict)


def _model_dir(path: Path | None) -> Path:
    """The model directory, its parts and card checked before TensorFlow is loaded (a bad card fails fast)."""
    from moderation.model import verify_bundle

    directory = path if path is not None else config.default_model_dir()
    verify_bundle(directory)
    return directory


def _chosen_threshold(directory: Path, args: argparse.Namespace) -> tuple[float | None, str | None]:
    """``--threshold`` as given, or ``--operating-point`` looked up on the (verified) card; None: the card's."""
    if args.operating_point is None:
        return args.threshold, None
    from moderation.model import choose_threshold, read_card

    return choose_threshold(read_card(directory), operating_point=args.operating_point)


def _threshold_note(threshold: float, point: str | None) -> str:
    return f"threshold {threshold:.4f}" + (f", operating point {point}" if point else "")


def _train(args: argparse.Namespace) -> int:
    input_file(args.data)
    _check_train_out(args.out, args.replace, args.db)
    if args.init_from is not None:
        _model_dir(args.init_from)  # a missing or broken model is refused before the data is read
    _check_training_data(args.data, args.seed)
    from moderation.model import strict_json_value
    from moderation.training import TrainingConfig, train_from_file

    show = wanted(args.progress)
    cfg = TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                         max_len=args.max_len, patience=args.patience, max_train_rows=args.max_train_rows,
                         seed=args.seed, verbose=0,
                         init_from=None if args.init_from is None else str(args.init_from))
    # stdout carries the metrics JSON alone: anything a library prints while training goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        bundle = train_from_file(args.data, args.out, cfg, progress=show)
    print(f"model {bundle.version} written to {args.out} (threshold {bundle.threshold:.4f})", file=sys.stderr)
    unseen = bundle.card.training_data.get("unseen_characters")
    if unseen is not None:
        top = " ".join(f"{char}×{count}" for char, count in unseen["top"][:10])
        print(f"warm start from {args.init_from}: {unseen['rows_with_unseen']} training reviews hold "
              f"{unseen['distinct']} characters the vocabulary lacks (read as out-of-vocabulary)"
              + (f": {top}" if top else ""), file=sys.stderr)
    print(json.dumps(strict_json_value(bundle.card.metrics), indent=2, ensure_ascii=False))
    return 0


def _check_training_data(path: Path, seed: int) -> None:
    """Refuse unusable data before TensorFlow loads (train_from_file checks again, for other callers)."""
    from moderation.data import (DEFAULT_TEST_FRACTION, DEFAULT_VALIDATION_FRACTION, check_split, load_labelled,
                                 split_by_group)

    split = split_by_group(load_labelled(path), DEFAULT_VALIDATION_FRACTION, DEFAULT_TEST_FRACTION, seed)
    check_split(split, require_test=True, source=str(path))


#: What ``train`` writes into ``--out``; anything else there is not ours to overwrite.
TRAIN_OUTPUTS = {"model.keras", "vocab.json", "card.json", "training_curve.png"}


def _check_train_out(out: Path, replace: bool, db_url: str | None) -> None:
    """``--out`` must be new or empty; ``--replace`` may overwrite a model of ours, never a registered one."""
    if out.exists() and not out.is_dir():
        raise InputDataError(f"--out {out} is a file, not a model directory")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not present:
        return
    if not replace:
        raise InputDataError(f"--out {out} already holds {', '.join(present[:4])}: train into a new directory, "
                             f"or give --replace to overwrite a model that is not registered")
    foreign = [name for name in present if name not in TRAIN_OUTPUTS]
    if foreign:
        raise InputDataError(f"--out {out} holds files train does not write ({', '.join(foreign[:4])}): "
                             f"not replacing it")
    version = _registered_at(out, db_url)
    if version is not None:
        raise ModelBundleError(f"--out {out} holds registered model {version}: a registered model cannot be "
                               f"replaced; train into a new directory (a new version)")


def _registered_at(out: Path, db_url: str | None) -> str | None:
    """The version registered from ``out`` or under its name, if the registry has one."""
    from sqlalchemy import inspect, select

    from moderation import db
    from moderation.registry import registered_version_at

    resolved = db.resolve_db_url(db_url)
    if resolved.startswith("sqlite:///") and not Path(resolved.removeprefix("sqlite:///")).is_file():
        return None  # no registry database yet: nothing is registered
    engine = db.make_engine(db_url, must_exist=True)
    try:
        version = registered_version_at(engine, out)
        if version is None and out.name:
            with db.translate_errors(engine), engine.connect() as conn:
                if inspect(conn).has_table(db.model_versions.name):
                    version = conn.execute(select(db.model_versions.c.version)
                                           .where(db.model_versions.c.version == out.name)).scalar()
        return version
    finally:
        engine.dispose()


def _evaluate(args: argparse.Namespace) -> int:
    from moderation.data import balance_classes, load_labelled
    from moderation.scoring import load_scorer
    from moderation.training import evaluate_frame

    frame = load_labelled(input_file(args.data))
    if args.balanced:
        frame = balance_classes(frame)
    scorer = load_scorer(_model_dir(args.model))
    bundle = scorer.bundle
    with progress("evaluating", len(frame), enabled=wanted(args.progress)) as done:
        result = evaluate_frame(scorer, frame, done)
    print(f"model {bundle.version} on {args.data} ({len(frame)} labelled rows, threshold {bundle.threshold:.4f})")
    for key, value in result.items():
        print(f"  {key:20s} {value}")
    return 0


def _score_file(args: argparse.Namespace) -> int:
    from moderation.data import TEXT_COLUMN, read_table, require_text_column
    from moderation.reading import describe_rejections, frame_rejections
    from moderation.scoring import load_scorer

    input_file(args.input)
    if args.output.resolve() == args.input.resolve():
        raise InputDataError(f"output {args.output} is the input file: give another name")
    if args.output.suffix.lower() not in {".parquet", ".csv"}:
        raise InputDataError(f"output must end in .parquet or .csv, not {args.output.name}")
    output_file(args.output, args.force)
    model_dir = _model_dir(args.model)
    chosen, point = _chosen_threshold(model_dir, args)  # an unknown point is refused before the file is read
    frame = read_table(args.input)
    require_text_column(frame, str(args.input))
    scorer = load_scorer(model_dir, batch_size=args.batch_size, threshold=chosen, rows=len(frame))
    with progress("scoring", len(frame), enabled=wanted(args.progress)) as done:
        result = scorer.score_texts(frame[TEXT_COLUMN], done)
    out = frame.reset_index(drop=True).join(result.to_frame())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.output.suffix.lower() == ".parquet":
        out.to_parquet(args.output, index=False)
    else:
        out.to_csv(args.output, index=False)
    skipped = out["skip_reason"].value_counts().to_dict()
    rejected, rejections = frame_rejections(frame)  # lines not in UTF-8, as `reviews import` reports them
    print(f"scored {int(out['score'].notna().sum())} of {len(out)} reviews with {scorer.bundle.version}, "
          f"flagged {int(out['flagged'].sum())} ({_threshold_note(scorer.threshold, point)}), "
          f"skipped {sum(skipped.values())}{' ' + json.dumps(skipped, ensure_ascii=False) if skipped else ''}"
          f"{', ' + describe_rejections(rejected, rejections) if rejected else ''} -> {args.output}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from moderation.scoring import load_scorer, prefix_trace

    if sys.stderr.isatty():  # loading the model can take a while (TensorFlow's import, where Keras scores): say so
        print("loading the model ...", file=sys.stderr, flush=True)
    model_dir = _model_dir(args.model)
    chosen, point = _chosen_threshold(model_dir, args)
    scorer = load_scorer(model_dir, threshold=chosen)
    if chosen is not None:  # not the card's own threshold: say which one NEGATIVE means
        print(f"model {scorer.bundle.version}: {_threshold_note(scorer.threshold, point)}", file=sys.stderr)
    result = scorer.score_texts(args.texts)
    for text, score, reason in zip(args.texts, result.score, result.skip_reason):
        if reason is not None and not (isinstance(reason, float) and math.isnan(reason)):
            print(f"  -      skipped ({reason})  {text}")
            continue
        verdict = "NEGATIVE" if score >= scorer.threshold else "ok"
        print(f"{score:7.4f}  {verdict:8s}  {text}")
        if args.trace:
            for prefix, prefix_score in prefix_trace(scorer, text):
                bar = "#" * int(round(prefix_score * 20))
                print(f"           {prefix_score:6.3f} {bar:20s} {prefix}")
    sys.stdout.flush()
    return 0

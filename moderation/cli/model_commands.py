"""Model commands: train, evaluate, score-file, predict."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from moderation import config


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train a model directory from a labelled file")
    train.add_argument("--data", required=True, type=Path, help="Parquet/CSV/TSV with text and rating or label")
    train.add_argument("--out", required=True, type=Path, help="model directory to write, e.g. models/NAME")
    train.add_argument("--epochs", type=int, default=8)
    train.add_argument("--batch-size", type=int, default=256)
    train.add_argument("--learning-rate", type=float, default=2e-3)
    train.add_argument("--max-len", type=int, default=150)
    train.add_argument("--patience", type=int, default=2)
    train.add_argument("--max-train-rows", type=int, default=None, help="sample the training split (quick runs)")
    train.add_argument("--seed", type=int, default=13)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="metrics of a model on a labelled file")
    evaluate.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped model)")
    evaluate.add_argument("--data", required=True, type=Path)
    evaluate.add_argument("--balanced", action="store_true", help="down-sample to equal classes first")
    evaluate.set_defaults(handler=_evaluate)

    score = commands.add_parser("score-file", help="score a Parquet/CSV/TSV file with a text column")
    score.add_argument("input", type=Path)
    score.add_argument("output", type=Path, help="output .parquet or .csv (by extension)")
    score.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped model)")
    score.add_argument("--batch-size", type=int, default=None,
                       help="rows per batch (default: 1024 on CPU, 8192 on a GPU; see MODERATION_SCORING_BATCH_ROWS)")
    score.add_argument("--threshold", type=float, default=None, help="override the card's decision threshold")
    score.set_defaults(handler=_score_file)

    predict = commands.add_parser("predict", help="score texts given on the command line")
    predict.add_argument("texts", nargs="+")
    predict.add_argument("--model", type=Path, default=None)
    predict.add_argument("--trace", action="store_true", help="also show the score over growing word prefixes")
    predict.set_defaults(handler=_predict)


def _model_dir(path: Path | None) -> Path:
    return path if path is not None else config.default_model_dir()


def _train(args: argparse.Namespace) -> int:
    from moderation.training import TrainingConfig, train_from_file

    cfg = TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                         max_len=args.max_len, patience=args.patience, max_train_rows=args.max_train_rows,
                         seed=args.seed)
    bundle = train_from_file(args.data, args.out, cfg)
    print(f"model {bundle.version} written to {args.out} (threshold {bundle.threshold:.4f})")
    print(json.dumps(bundle.card.metrics, indent=2, ensure_ascii=False))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from moderation.data import balance_classes, load_labelled
    from moderation.scoring import load_scorer
    from moderation.training import evaluate_frame

    frame = load_labelled(args.data)
    if args.balanced:
        frame = balance_classes(frame)
    scorer = load_scorer(_model_dir(args.model))
    bundle = scorer.bundle
    result = evaluate_frame(scorer, frame)
    print(f"model {bundle.version} on {args.data} ({len(frame)} labelled rows, threshold {bundle.threshold:.4f})")
    for key, value in result.items():
        print(f"  {key:20s} {value}")
    return 0


def _score_file(args: argparse.Namespace) -> int:
    from moderation.data import TEXT_COLUMN, read_table, require_columns
    from moderation.errors import InputDataError
    from moderation.scoring import load_scorer

    if args.output.suffix.lower() not in {".parquet", ".csv"}:
        raise InputDataError(f"output must end in .parquet or .csv, not {args.output.name}")
    frame = read_table(args.input)
    require_columns(frame, [TEXT_COLUMN], str(args.input))
    scorer = load_scorer(_model_dir(args.model), batch_size=args.batch_size, threshold=args.threshold)
    result = scorer.score_texts(frame[TEXT_COLUMN])
    out = frame.reset_index(drop=True).join(result.to_frame())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.output.suffix.lower() == ".parquet":
        out.to_parquet(args.output, index=False)
    else:
        out.to_csv(args.output, index=False)
    skipped = out["skip_reason"].value_counts().to_dict()
    print(f"scored {int(out['score'].notna().sum())} of {len(out)} reviews with {scorer.bundle.version}, "
          f"flagged {int(out['flagged'].sum())} (threshold {scorer.threshold:.4f}), "
          f"skipped {sum(skipped.values())}{' ' + json.dumps(skipped, ensure_ascii=False) if skipped else ''} -> {args.output}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from moderation.scoring import load_scorer, prefix_trace

    scorer = load_scorer(_model_dir(args.model))
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

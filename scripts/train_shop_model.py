"""Train, calibrate and measure the shipped shop model; or measure an existing one the same way.

    python scripts/train_shop_model.py --out models/ko-char-lstm-v2
    python scripts/train_shop_model.py --evaluate models/ko-char-lstm-v1
    python scripts/train_shop_model.py --recalibrate models/ko-char-lstm-v2

Training starts from the movie-only model (``--init-from``), draws
movie, Steam and shopping rows each epoch (see :mod:`moderation.mixture`),
keeps the epoch best on shopping + Steam validation rows, then chooses the
operating points and the default threshold on validation rows per domain
(:mod:`moderation.calibration`) and measures every domain on its test rows,
class-balanced. The defaults are the recipe of the shipped model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


def balanced_tests(splits: dict) -> dict:
    from moderation.data import balance_classes

    return {d: balance_classes(s.test, seed=13) for d, s in splits.items()}


def per_domain_table(bundle, splits: dict, threshold: float) -> dict:
    """Figures of ``bundle`` on each domain's balanced test rows at ``threshold``."""
    from moderation import metrics
    from moderation.scoring import Scorer

    scorer = Scorer(bundle)
    table = {}
    for domain, frame in balanced_tests(splits).items():
        scores = scorer.score_texts(frame["text"]).score
        valid = ~(scores != scores)
        labels = frame["label"].to_numpy()[valid]
        row = metrics.summary(labels, scores[valid], threshold)
        row["positives_flagged"] = round(float((scores[valid][labels == 0] >= threshold).mean()), 5)
        table[domain] = row
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movie", type=Path, default=SHARED / "ko_reviews.parquet")
    parser.add_argument("--other", type=Path, default=SHARED / "other_domains.parquet")
    parser.add_argument("--out", type=Path, help="model directory to write")
    parser.add_argument("--version", help="model version (default: the folder name)")
    parser.add_argument("--init-from", type=Path, default=ROOT / "models" / "ko-char-lstm-v1")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--rows", default="movie=60000,steam=24000,shopping=15000",
                        help="rows drawn per epoch per domain")
    parser.add_argument("--select-on", default="shopping,steam",
                        help="domains whose mean validation ROC-AUC picks the best epoch")
    parser.add_argument("--max-fpr", type=float, default=0.08,
                        help="share of positive shopping validation rows the default threshold may flag")
    parser.add_argument("--evaluate", type=Path, help="only measure this model directory at its card threshold")
    parser.add_argument("--recalibrate", type=Path,
                        help="only choose this model directory's operating points and default threshold again")
    parser.add_argument("--report", type=Path, help="write the per-domain figures as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from moderation.domains import load_mixture, split_domains
    from moderation.model import load_bundle

    splits = split_domains(load_mixture(args.movie, args.other))
    if args.evaluate:
        bundle = load_bundle(args.evaluate)
        report = {"version": bundle.version, "threshold": bundle.threshold,
                  "test_balanced": per_domain_table(bundle, splits, bundle.threshold)}
    elif args.recalibrate:
        from moderation.calibration import calibrate, write_card

        bundle = load_bundle(args.recalibrate)
        calibrate(bundle, {d: s.validation for d, s in splits.items()}, balanced_tests(splits), "shopping",
                  args.max_fpr)
        write_card(args.recalibrate, bundle.card)
        report = {"version": bundle.version, "threshold": bundle.threshold,
                  "test_balanced": per_domain_table(bundle, splits, bundle.threshold),
                  "operating_points": bundle.card.operating_points}
    else:
        if not args.out:
            parser.error("--out is required unless --evaluate is given")
        from moderation.calibration import calibrate, write_card
        from moderation.mixture import MixtureConfig, train_mixture

        rows = {k: int(v) for k, v in (part.split("=") for part in args.rows.split(","))}
        config = MixtureConfig(rows_per_epoch=rows, epochs=args.epochs, learning_rate=args.learning_rate,
                               select_on=tuple(args.select_on.split(",")))
        source = {"movie": str(args.movie.name), "other_domains": str(args.other.name)}
        bundle = train_mixture(splits, args.out, args.version or args.out.name, config,
                               init_from=args.init_from, source=source)
        tests = balanced_tests(splits)
        calibrate(bundle, {d: s.validation for d, s in splits.items()}, tests, "shopping", args.max_fpr)
        write_card(args.out, bundle.card)
        report = {"version": bundle.version, "threshold": bundle.threshold,
                  "test_balanced": per_domain_table(bundle, splits, bundle.threshold),
                  "operating_points": bundle.card.operating_points}
    text = json.dumps(report, ensure_ascii=False, indent=2)
    print(text)
    if args.report:
        args.report.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

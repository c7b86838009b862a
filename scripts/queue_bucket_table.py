"""How a model's flags fall into the queue's priority buckets; optionally add the buckets to its card.

    python scripts/queue_bucket_table.py models/ko-char-lstm-v2 --add-to-card
    python scripts/queue_bucket_table.py models/ko-char-lstm-v2

With ``--add-to-card`` the queue buckets (:func:`moderation.calibration.queue_buckets`)
are chosen on the same validation rows per domain as ``train_shop_model.py``
calibrates on and written to card.json, which is otherwise left as it was:
weights, threshold and operating points unchanged. A card that has them
already is refused unless they come out the same.

Then, on the class-balanced test rows of each domain, it prints a Markdown
table of the flags at the card's threshold per bucket: their share of the
flags and the precision among them, counted as the rows are (balanced) and
reweighted to a shop's natural mix (``--negative-share``), under the
queue's rule (:func:`moderation.registry.bucket_thresholds`) and, for
comparison, under the card's precision operating points.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


def table(rows: list[dict]) -> str:
    """The bucket figures as one Markdown table."""
    from tabulate import tabulate

    return tabulate(rows, headers="keys", tablefmt="github", floatfmt=".3f")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, nargs="?", default=ROOT / "models" / "ko-char-lstm-v2")
    parser.add_argument("--movie", type=Path, default=SHARED / "ko_reviews.parquet")
    parser.add_argument("--other", type=Path, default=SHARED / "other_domains.parquet")
    parser.add_argument("--add-to-card", action="store_true", help="choose the queue buckets and write them to card.json")
    parser.add_argument("--negative-share", type=float, default=0.10,
                        help="share of negative reviews in the natural mix the figures are reweighted to")
    parser.add_argument("--domains", default="shopping,steam", help="domains whose test rows are tabled")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from moderation import metrics
    from moderation.calibration import queue_buckets, scored_labels, write_card
    from moderation.data import balance_classes
    from moderation.domains import load_mixture, split_domains
    from moderation.model import load_bundle
    from moderation.registry import bucket_thresholds

    bundle = load_bundle(args.model)
    card = bundle.card
    splits = split_domains(load_mixture(args.movie, args.other))
    if args.add_to_card:
        chosen = queue_buckets(bundle, {d: s.validation for d, s in splits.items()})
        if card.queue_buckets and card.queue_buckets != chosen:
            parser.error(f"{args.model} already has other queue buckets; recalibrate it instead")
        card.queue_buckets = chosen
        write_card(args.model, card)
    rules = {"queue buckets (FPR budgets)": bucket_thresholds(card),
             "precision operating points": {name: float(point["threshold"]) for name, point in
                                            card.operating_points.get(card.default_domain or "", {}).items()}}
    rows = []
    for domain in args.domains.split(","):
        labels, scores = scored_labels(bundle, balance_classes(splits[domain].test, seed=13))
        for rule, points in rules.items():
            balanced = metrics.bucket_shares(labels, scores, card.threshold, points)
            natural = metrics.bucket_shares(labels, scores, card.threshold, points, args.negative_share)
            for flat, mixed in zip(balanced, natural):
                rows.append({"test rows": domain, "buckets by": rule, "bucket": flat["bucket"],
                             "threshold": points.get(str(flat["bucket"]), card.threshold),
                             "flags": flat["flags"], "share (balanced)": flat["share"],
                             "precision (balanced)": flat["precision"],
                             f"share ({args.negative_share:.0%} neg.)": mixed["share"],
                             f"precision ({args.negative_share:.0%} neg.)": mixed["precision"]})
    print(f"{card.version} at its threshold {card.threshold}, buckets of the {card.default_domain} domain\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Labelled reviews from several kinds of site, and a split per domain.

The shop's model learns from three sources of Korean review text: movie
reviews (the large corpus, 1-10 ratings), game-store reviews (Steam) and
shopping reviews (Naver shopping), the last two from ``other_domains.parquet``.
Each domain is split on its own so every one of them has validation rows
(to choose thresholds and the best epoch) and test rows (used for nothing
but the figures):

* movie: by item, with the same seeded hash and shares as the shipped
  movie-only model, so its test rows are the ones it was measured on;
* steam: by row (the file has no item ids), 10 % validation, 10 % test;
* shopping: by row, 25 % validation, 35 % test: there are only 1,361 rows,
  and the figures that decide the default threshold need enough of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from moderation.data import Split, labels_from_ratings, read_table, require_columns, split_by_group

DOMAINS = ("movie", "steam", "shopping")


@dataclass(frozen=True)
class DomainShares:
    """Shares of a domain's groups held out for validation and test."""

    validation: float
    test: float


SHARES: dict[str, DomainShares] = {
    "movie": DomainShares(0.1, 0.1),
    "steam": DomainShares(0.1, 0.1),
    "shopping": DomainShares(0.25, 0.35),
}


def load_movie(path: Path | str) -> pd.DataFrame:
    """Movie reviews labelled from their 1-10 rating (1-4 negative, 9-10 positive), grouped by item."""
    frame = read_table(path, columns=["item_id", "rating", "text"])
    labels = labels_from_ratings(frame["rating"], 10)
    out = pd.DataFrame({"text": frame["text"].astype("string"), "label": labels,
                        "group": frame["item_id"].astype("int64"), "domain": "movie"})
    return out[out["label"].notna()].reset_index(drop=True).astype({"label": "int8"})


def load_other_domains(path: Path | str) -> pd.DataFrame:
    """Steam and shopping reviews with their binary labels; each row is its own group."""
    frame = read_table(path)
    require_columns(frame, ["review_id", "domain", "label", "text"], str(path))
    out = pd.DataFrame({"text": frame["text"].astype("string"), "label": frame["label"].astype("int8"),
                        "group": frame["review_id"].astype("int64"), "domain": frame["domain"].astype(str)})
    return out.reset_index(drop=True)


def load_mixture(movie_path: Path | str, other_path: Path | str) -> pd.DataFrame:
    """All labelled rows of the three domains: ``text``, ``label`` (1 = negative), ``group``, ``domain``."""
    return pd.concat([load_movie(movie_path), load_other_domains(other_path)], ignore_index=True)


def split_domains(frame: pd.DataFrame, seed: int = 13) -> dict[str, Split]:
    """One :class:`Split` per domain present, with that domain's shares (see the module docstring)."""
    splits = {}
    for domain, rows in frame.groupby("domain", sort=False):
        shares = SHARES.get(str(domain), DomainShares(0.1, 0.1))
        splits[str(domain)] = split_by_group(rows.reset_index(drop=True), shares.validation, shares.test, seed)
    return splits

"""Shop reviews for the demo and the adaptation experiment, from the other-domains corpus.

Tooling of the checkout (``scripts/``), not part of the installed package.

``other_domains.parquet`` holds real Korean shopping and Steam (game-store)
reviews, each with a label (1 = negative) but only 118 with the star rating
the author gave. A shop's database stores 5-point stars, so every row gets
one, and the rule is written into the rows themselves (``rating_source``):

* ``stars``: the author's own rating, kept as it is;
* ``derived``: **made up from the label**, not given by anyone: a negative
  review gets 1 or 2 stars, a positive one 4 or 5, the choice fixed by a
  seeded hash of the review id. 3 stars (ambiguous) is never derived. The
  stars are therefore exactly as informative as the label, no more: they
  let rating labels (1-2 negative, 4-5 positive) reproduce it.

The corpus has no products either: each review is given one of a few dozen
synthetic products of its domain (steam products 1001.., shopping 2001..),
again by a seeded hash, so splits by product behave as on a real shop.

Nothing here loads TensorFlow.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from moderation.errors import InputDataError

#: The corpus beside the checkout (see /work/shared/data/README.md), else the sample the tests ship.
SHARED_FILE = "other_domains.parquet"
SAMPLE_FILE = Path("tests") / "data" / "other_domains_sample.parquet"
DOMAINS = ("shopping", "steam")
#: First synthetic product id per domain.
PRODUCT_BASE = {"steam": 1001, "shopping": 2001}
PRODUCTS_PER_DOMAIN = 40
SEED = 20240301
COLUMNS = ["review_id", "product_id", "domain", "rating", "rating_source", "label", "text"]
#: The checkout this file belongs to.
REPO_ROOT = Path(__file__).resolve().parents[1]


def corpus_path() -> Path:
    """The full corpus in ``shared/data`` next to the checkout, else the 800-row sample in ``tests/data``."""
    shared = REPO_ROOT.parent / "shared" / "data" / SHARED_FILE
    return shared if shared.is_file() else REPO_ROOT / SAMPLE_FILE


def _unit(seed: int, what: str, review_id: int) -> int:
    """A stable 64-bit number for (seed, what, review id): the same on every machine and run."""
    digest = hashlib.blake2b(f"{seed}:{what}:{review_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def derived_stars(review_id: int, label: int, seed: int = SEED) -> int:
    """Stars made up from a label: negative (1) -> 1 or 2, positive (0) -> 4 or 5, by a seeded hash."""
    if label not in (0, 1):
        raise InputDataError(f"review {review_id}: label must be 0 or 1, not {label!r}")
    low = 1 if label == 1 else 4
    return low + _unit(seed, "stars", review_id) % 2


def prepare(frame: pd.DataFrame, products_per_domain: int = PRODUCTS_PER_DOMAIN, seed: int = SEED) -> pd.DataFrame:
    """Corpus rows as a shop's reviews: 5-point stars (kept or derived, see module doc) and synthetic products.

    ``frame`` has the corpus columns ``review_id``, ``domain``, ``rating``
    (nullable), ``label`` and ``text``. The result has :data:`COLUMNS`, in
    review id order; ``reviews import`` reads ``review_id``, ``product_id``,
    ``rating`` and ``text`` and ignores the rest.
    """
    missing = {"review_id", "domain", "rating", "label", "text"} - set(frame.columns)
    if missing:
        raise InputDataError(f"shop review rows lack {', '.join(sorted(missing))}")
    unknown = set(frame["domain"].unique()) - set(PRODUCT_BASE)
    if unknown:
        raise InputDataError(f"unknown review domains {', '.join(sorted(map(str, unknown)))}; "
                             f"known: {', '.join(sorted(PRODUCT_BASE))}")
    if products_per_domain < 1:
        raise InputDataError(f"products per domain must be at least 1, not {products_per_domain}")
    ids = frame["review_id"].astype("int64").tolist()
    labels = frame["label"].astype("int64").tolist()
    given = pd.to_numeric(frame["rating"], errors="coerce")
    stars = [int(r) if pd.notna(r) else derived_stars(i, lab, seed) for i, lab, r in zip(ids, labels, given)]
    products = [PRODUCT_BASE[d] + _unit(seed, "product", i) % products_per_domain
                for i, d in zip(ids, frame["domain"])]
    out = pd.DataFrame({
        "review_id": pd.Series(ids, dtype="int64"),
        "product_id": pd.Series(products, dtype="int64"),
        "domain": frame["domain"].astype("string").to_numpy(),
        "rating": pd.Series(stars, dtype="int8"),
        "rating_source": pd.Series(["stars" if pd.notna(r) else "derived" for r in given], dtype="string"),
        "label": pd.Series(labels, dtype="int8"),
        "text": frame["text"].astype("string").to_numpy(),
    })
    return out.sort_values("review_id").reset_index(drop=True)


def load(path: Path | str | None = None, domains: tuple[str, ...] = DOMAINS,
         products_per_domain: int = PRODUCTS_PER_DOMAIN, seed: int = SEED) -> pd.DataFrame:
    """Read the corpus (default :func:`corpus_path`) and :func:`prepare` the rows of ``domains``."""
    path = Path(path) if path is not None else corpus_path()
    if not path.is_file():
        raise InputDataError(f"shop review corpus not found: {path} (expected {SHARED_FILE} in shared/data "
                             f"beside the checkout, or {SAMPLE_FILE})")
    frame = pd.read_parquet(path)
    frame = frame[frame["domain"].isin(domains)]
    if frame.empty:
        raise InputDataError(f"{path} has no reviews of the domains {', '.join(domains)}")
    return prepare(frame, products_per_domain, seed)

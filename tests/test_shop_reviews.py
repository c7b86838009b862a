"""Shop reviews for the demo: real shopping and Steam rows with 5-point stars, kept or derived, and products."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import shop_reviews  # scripts/shop_reviews.py (pytest's pythonpath)
from moderation.errors import InputDataError

SAMPLE = Path(__file__).resolve().parent / "data" / "other_domains_sample.parquet"


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return shop_reviews.load(SAMPLE)


def test_every_review_gets_stars_that_agree_with_its_label(rows: pd.DataFrame) -> None:
    assert len(rows) == 800 and set(rows["domain"]) == {"shopping", "steam"}
    assert rows["rating"].between(1, 5).all()
    assert (rows.loc[rows["label"] == 1, "rating"] <= 2).all()
    assert (rows.loc[rows["label"] == 0, "rating"] >= 4).all()
    derived = rows[rows["rating_source"] == "derived"]
    assert 3 not in set(derived["rating"])  # ambiguous stars are never made up
    # both stars of each side occur, so the derived ratings look like a shop's and not like a label
    assert set(derived["rating"]) == {1, 2, 4, 5}


def test_author_stars_are_kept_and_marked(rows: pd.DataFrame) -> None:
    source = pd.read_parquet(SAMPLE).set_index("review_id")
    given = source["rating"].dropna()
    kept = rows.set_index("review_id").loc[given.index]
    assert len(given) > 0
    assert (kept["rating"].astype(int) == given.astype(int)).all()
    assert (kept["rating_source"] == "stars").all()


def test_products_are_a_few_dozen_per_domain_and_stable(rows: pd.DataFrame) -> None:
    for domain, base in shop_reviews.PRODUCT_BASE.items():
        products = rows.loc[rows["domain"] == domain, "product_id"]
        assert products.between(base, base + shop_reviews.PRODUCTS_PER_DOMAIN - 1).all()
        assert products.nunique() >= 30
    again = shop_reviews.load(SAMPLE)
    pd.testing.assert_frame_equal(rows, again)
    other_seed = shop_reviews.load(SAMPLE, seed=7)
    assert not (other_seed["product_id"] == rows["product_id"]).all()


def test_prepared_rows_import_as_five_point_ratings(rows: pd.DataFrame, tmp_path: Path, sqlite_url: str) -> None:
    from sqlalchemy import func, select

    from moderation import db
    from moderation.importing import import_reviews

    path = tmp_path / "shop.parquet"
    rows.to_parquet(path, index=False)
    engine = db.make_engine(sqlite_url)
    db.init_schema(engine)
    report = import_reviews(engine, path)
    assert report.rows_read == 800 and not report.rejections
    with engine.connect() as conn:
        top, products = conn.execute(select(func.max(db.reviews.c.rating),
                                            func.count(db.reviews.c.product_id.distinct()))).one()
    engine.dispose()
    assert top == 5 and products == rows["product_id"].nunique()


def test_missing_corpus_and_unknown_domain_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="corpus not found"):
        shop_reviews.load(tmp_path / "nope.parquet")
    frame = pd.DataFrame({"review_id": [1], "domain": ["movies"], "rating": [None], "label": [1], "text": ["별로"]})
    with pytest.raises(InputDataError, match="unknown review domains movies"):
        shop_reviews.prepare(frame)


def test_demo_seeds_shop_reviews(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import demo  # scripts/demo.py

    monkeypatch.setattr(demo, "corpus_path", lambda: SAMPLE)  # tests never read the shared corpus
    out = pd.read_parquet(demo.demo_reviews_file(tmp_path))
    assert set(out["domain"]) <= {"shopping", "steam"} and out["rating"].between(1, 5).all()
    assert (out["domain"] == "shopping").any()

"""The web page's benchmark runs end to end on PostgreSQL; its timings are never asserted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from web_seed import free_port

import web_queue  # benchmarks/web_queue.py (pytest's pythonpath)

PG_ADMIN_URL = os.environ.get("MODERATION_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.mark.slow
@pytest.mark.postgres
def test_web_benchmark_times_every_page(tiny_model_dir: Path, tmp_path: Path) -> None:
    if os.environ.get("MODERATION_SKIP_PG") == "1":
        pytest.skip("MODERATION_SKIP_PG=1")
    out = tmp_path / "web.json"
    assert web_queue.main(["--items", "120", "--requests", "2", "--cold-items", "2", "--model", str(tiny_model_dir),
                           "--pg-url", PG_ADMIN_URL, "--port", str(free_port()), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["items"] == 120 and report["database"] == "postgresql"
    assert set(report["pages"]) == {"item_first_model_load", "queue_first_page", "queue_filtered",
                                    "queue_deep_page", "item_cold", "item_warm", "stats"}
    assert all(page["p50_ms"] > 0 for page in report["pages"].values())

"""The adaptation experiment's own rules: which Steam reviews the shop imports, and its docs section."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "shop_adaptation_experiment.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("shop_adaptation_experiment", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shop_imports_a_stable_sixty_percent() -> None:
    script = load_script()
    chosen = [script.imported(i) for i in range(1, 20_001)]
    assert 0.58 < sum(chosen) / len(chosen) < 0.62
    assert chosen == [script.imported(i) for i in range(1, 20_001)]


def test_docs_section_is_replaced_not_repeated(tmp_path: Path) -> None:
    script = load_script()
    doc = tmp_path / "model.md"
    doc.write_text("# Model\n\nintro\n", encoding="utf-8")
    script.write_docs(f"{script.BEGIN}\nfirst\n{script.END}", doc)
    script.write_docs(f"{script.BEGIN}\nsecond\n{script.END}", doc)
    text = doc.read_text(encoding="utf-8")
    assert text.count(script.BEGIN) == 1 and "second" in text and "first" not in text and "intro" in text

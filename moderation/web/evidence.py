"""Why a review was flagged: the words that drove its score, for highlighting in the page.

The evidence is the prefix trace of :func:`moderation.scoring.prefix_trace`:
the review is scored over growing word prefixes, and each word is credited
with how much adding it moved the score (``score(prefix up to the word) -
score(prefix before it)``). Words that raised the score are the ones shown
highlighted, their shade proportional to the rise.

The model is the one that flagged the item (its ``model_version`` in the
registry), else the active one; models load lazily, once per process, and
the evidence of a review is cached per (review, text version, model version),
so a second visit costs nothing.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from moderation import db

log = logging.getLogger(__name__)

#: Evidence kept in memory (a few KB each).
CACHE_SIZE = 2048
#: A word must move the score by at least this much to be highlighted.
MIN_SHIFT = 0.02
#: Longest text traced: the model reads 150 characters; a longer review is traced on its first words only.
MAX_WORDS = 80
WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Segment:
    """A piece of the review text: a word with its score shift, or the whitespace between words."""

    text: str
    shift: float = 0.0
    #: 0-1 shade of the highlight (0: not highlighted).
    weight: float = 0.0

    @property
    def highlighted(self) -> bool:
        return self.weight > 0.0


@dataclass(frozen=True)
class Evidence:
    model_version: str
    segments: tuple[Segment, ...]
    #: The score of the whole traced text (None when the model skips it, e.g. too short after cleaning).
    score: float | None
    #: (word, shift) of the words that raised the score most, largest first.
    top_words: tuple[tuple[str, float], ...]


def explain(scorer: Any, text: str, model_version: str) -> Evidence:
    """The evidence for ``text`` under a loaded :class:`~moderation.scoring.Scorer`."""
    from moderation.scoring import prefix_trace

    matches = list(WORD.finditer(text or ""))
    traced = matches[:MAX_WORDS]
    trace = dict(prefix_trace(scorer, " ".join(m.group() for m in traced)))
    shifts: list[float] = []
    previous = 0.0
    words: list[str] = []
    for match in traced:
        words.append(match.group())
        score = trace.get(" ".join(words))
        if score is None:  # a prefix the model skips (nothing left after cleaning): no credit
            shifts.append(0.0)
            continue
        shifts.append(score - previous)
        previous = score
    largest = max((s for s in shifts if s >= MIN_SHIFT), default=0.0)
    segments: list[Segment] = []
    cursor = 0
    for index, match in enumerate(matches):
        if match.start() > cursor:
            segments.append(Segment(text[cursor:match.start()]))
        shift = shifts[index] if index < len(shifts) else 0.0
        weight = shift / largest if largest and shift >= MIN_SHIFT else 0.0
        segments.append(Segment(match.group(), shift=shift, weight=round(weight, 3)))
        cursor = match.end()
    if cursor < len(text or ""):
        segments.append(Segment(text[cursor:]))
    top = sorted(((s.text, s.shift) for s in segments if s.highlighted), key=lambda pair: -pair[1])[:5]
    final = trace.get(" ".join(words)) if words else None
    return Evidence(model_version=model_version, segments=tuple(segments), score=final, top_words=tuple(top))


class EvidenceService:
    """Loads scorers by model version on first use and caches evidence per review text and model."""

    def __init__(self, engine: Engine, fallback_model_dir: Path | None = None, cache_size: int = CACHE_SIZE):
        self._engine = engine
        self._fallback = fallback_model_dir
        self._cache_size = cache_size
        self._scorers: dict[str, Any] = {}
        self._cache: OrderedDict[tuple[int, int, str], Evidence] = OrderedDict()
        self._lock = threading.Lock()  # one model load and one trace at a time: TensorFlow is the bottleneck

    def for_item(self, item: dict[str, Any]) -> Evidence:
        """Evidence for a queue item (its ``review_id``, ``text``, ``text_version``, ``model_version``)."""
        key = (int(item["review_id"]), int(item.get("text_version") or 1), str(item.get("model_version") or ""))
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                return found
            version, scorer = self._scorer(key[2])
            evidence = explain(scorer, item.get("text") or "", version)
            self._cache[key] = evidence
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return evidence

    def cached(self, item: dict[str, Any]) -> bool:
        key = (int(item["review_id"]), int(item.get("text_version") or 1), str(item.get("model_version") or ""))
        return key in self._cache

    def _scorer(self, version: str) -> tuple[str, Any]:
        """The scorer of ``version`` from the registry, else of the active model (or the fallback directory)."""
        if version in self._scorers:
            return version, self._scorers[version]
        from moderation.scoring import load_scorer

        path, found = self._model_path(version)
        if found not in self._scorers:
            log.info("loading model %s from %s for evidence", found, path)
            self._scorers[found] = load_scorer(path)
        if found != version:
            log.warning("model %s is not available: evidence comes from %s", version or "(none)", found)
        return found, self._scorers[found]

    def _model_path(self, version: str) -> tuple[Path, str]:
        m = db.model_versions.c
        with db.translate_errors(self._engine), self._engine.connect() as conn:
            row = conn.execute(select(m.version, m.path).where(m.version == version)).first()
            if row is None or not Path(row[1]).is_dir():
                row = conn.execute(select(m.version, m.path).where(m.is_active.is_(True))).first()
        if row is not None and Path(row[1]).is_dir():
            return Path(row[1]), str(row[0])
        if self._fallback is None:
            from moderation import config

            self._fallback = config.default_model_dir()
        from moderation.model import read_card

        return self._fallback, read_card(self._fallback).version

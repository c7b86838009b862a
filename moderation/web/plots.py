"""The stats page's plots: matplotlib (Agg) drawn to inline SVG on the server, nothing from a CDN.

Each function takes the report of :func:`moderation.reporting.web_stats` and
returns one figure; :func:`all_figures` renders them all as SVG markup the
template embeds. Text in the figures (moderator names) is escaped by
matplotlib's SVG writer.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

#: matplotlib's pyplot state is global: one figure is drawn at a time.
_DRAW_LOCK = threading.Lock()
WIDTH, HEIGHT = 6.4, 3.0
BLUE, ORANGE, GREEN, RED, GREY = "#1f5fbf", "#e8590c", "#2b8a3e", "#c0262d", "#868e96"


@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    svg: Markup


def all_figures(report: dict[str, Any]) -> list[Figure]:
    """Every plot of the page, in the order shown."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    with _DRAW_LOCK:
        return [
            _svg("nightly", "Flag rate, observed precision and audit recall per night", _nightly(report)),
            _svg("backlog", "Backlog now: pending items by age of their flag", _backlog(report)),
            _svg("moderators", "Decisions per moderator (last 30 nights)", _moderators(report)),
            _svg("drift", "Scores of the latest run vs the runs before it (drift)", _drift(report)),
        ]


def _svg(name: str, title: str, figure: Any) -> Figure:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    text = text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: the SVG goes inline in HTML
    return Figure(name=name, title=title, svg=Markup(text))


def _empty(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", color=GREY, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _nightly(report: dict[str, Any]) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT))
    nights = report["nights"]
    if not nights:
        _empty(ax, "no scoring runs in the window")
        return fig
    labels = [n["night"][5:] for n in nights]
    x = range(len(nights))

    def series(key: str) -> list[float]:
        return [float("nan") if n[key] is None else n[key] for n in nights]

    ax.plot(x, series("precision"), marker="o", color=GREEN, label="observed precision")
    ax.plot(x, series("recall"), marker="s", color=BLUE, label="recall (audits)")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("precision, recall")
    ax.set_xticks(list(x), labels, rotation=45 if len(labels) > 8 else 0, fontsize=8)
    rate = ax.twinx()
    rate.bar(x, [100 * v if v == v else 0 for v in series("flag_rate")], color=ORANGE, alpha=0.25,
             label="flag rate (%)")
    rate.set_ylabel("flag rate (%)")
    handles = ax.get_legend_handles_labels()[0] + rate.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="lower left", fontsize=8)
    ax.set_zorder(rate.get_zorder() + 1)
    ax.patch.set_visible(False)
    return fig


def _backlog(report: dict[str, Any]) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT))
    backlog = report["backlog"]
    counts = backlog.get("age_histogram") or []
    if not backlog["size"]:
        _empty(ax, "no pending items")
        return fig
    edges = backlog["age_edges_hours"]
    labels = [f"<{edges[i + 1]} h" for i in range(len(edges) - 1)] + [f"≥{edges[-1]} h"]
    ax.bar(range(len(labels)), counts, color=BLUE)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("pending items")
    for value, colour, name in ((backlog["age_p50_hours"], GREEN, "p50"), (backlog["age_p95_hours"], RED, "p95")):
        if value is not None:
            ax.annotate(f"{name} {value:.1f} h", xy=(0.98, 0.9 if name == "p50" else 0.78),
                        xycoords="axes fraction", ha="right", color=colour)
    ax.set_title(f"{backlog['size']} pending", fontsize=9, loc="left")
    return fig


def _moderators(report: dict[str, Any]) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT))
    moderators = report["moderators"]
    if not moderators:
        _empty(ax, "no decisions yet")
        return fig
    names = list(moderators)[:15]
    left = [0] * len(names)
    for status, colour in (("confirmed", RED), ("dismissed", GREEN), ("unsure", GREY)):
        values = [moderators[name][status] for name in names]
        ax.barh(names, values, left=left, color=colour, label=status)
        left = [a + b for a, b in zip(left, values)]
    ax.invert_yaxis()
    ax.set_xlabel("decisions")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def _drift(report: dict[str, Any]) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT))
    drift = report["drift"]
    if drift.get("error"):
        _empty(ax, "scores not readable with this login")
        return fig
    latest, reference = drift["latest"], drift["reference"]
    if not sum(latest):
        _empty(ax, "no scores yet")
        return fig
    bins = drift["bins"]
    edges = [i / bins for i in range(bins + 1)]

    def share(counts: list[int]) -> list[float]:
        total = sum(counts)
        return [c / total if total else 0.0 for c in counts]

    if sum(reference):
        ax.stairs(share(reference), edges, fill=True, color=GREY, alpha=0.35,
                  label=f"previous {drift['reference_runs']} run(s)")
    ax.stairs(share(latest), edges, color=ORANGE, linewidth=2, label="latest run")
    ax.set_xlabel("score (probability the review is negative)")
    ax.set_ylabel("share of reviews")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    return fig

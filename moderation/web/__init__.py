"""The moderators' web page (``moderation serve``): see :mod:`moderation.web.app`."""

from __future__ import annotations

from typing import Any


def create_app(*args: Any, **kwargs: Any) -> Any:
    """:func:`moderation.web.app.create_app`, imported on first use (nothing heavy at package import)."""
    from moderation.web.app import create_app as build

    return build(*args, **kwargs)


__all__ = ["create_app"]

"""Moderator commands: flagged, decide, stats, labels, models."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    """Moderator commands are added here."""

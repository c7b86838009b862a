"""Nightly moderation of Korean shop reviews with a character-level LSTM.

The package is split by stage: :mod:`moderation.text` (cleaning),
:mod:`moderation.vocab` (characters to ids), :mod:`moderation.model`
(the network and its on-disk bundle), :mod:`moderation.training`,
:mod:`moderation.scoring`, :mod:`moderation.db`, :mod:`moderation.pipeline`
(the nightly job without Airflow) and :mod:`moderation.cli`.
"""

__version__ = "0.1.0"

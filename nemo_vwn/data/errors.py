"""Errors raised by the data step. All are ``ValueError`` so callers can catch one family."""

from __future__ import annotations


class DataError(ValueError):
    """Base class: bad input to the data step (corpus, options or output directory)."""


class CorpusError(DataError):
    """A corpus path is missing, unreadable, empty or malformed (e.g. JSONL without "text")."""


class OutputExistsError(DataError):
    """The output exists and ``overwrite`` was not given, or it is not a dataset we may replace."""


class VerificationError(DataError):
    """What Megatron reads back from the written .bin/.idx differs from what was written."""

"""The one error type of file reading: :class:`DataError`, a ``ValueError`` whose message names the file."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A data file or its metadata is missing, unreadable or inconsistent; the message names the file."""

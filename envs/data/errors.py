"""Exceptions raised by the data layer.

Every problem with a data file surfaces as a subclass of :class:`DataError` whose message names
the file, what is wrong with it and what to do about it. The subclasses also derive from the
matching built-in exception (``FileNotFoundError`` / ``ValueError``) so that callers that
already handle those keep working without knowing about rulegym.
"""

from __future__ import annotations

import os

__all__ = ["DataError", "MissingDataError", "ChecksumError", "CorruptDataError"]


class DataError(Exception):
    """Base class of every data-layer error.

    ``path`` is the file concerned when there is one, so that tools can point at it without
    parsing the message.
    """

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)

    def __str__(self) -> str:
        # OSError (a base of MissingDataError) would otherwise format errno/filename fields.
        return str(self.args[0]) if self.args else ""


class MissingDataError(DataError, FileNotFoundError):
    """A data file is absent and could not be downloaded (offline, network down, read-only root)."""


class ChecksumError(DataError, ValueError):
    """A data file's digest matches none of the published checksums; it is never used."""


class CorruptDataError(DataError, ValueError):
    """A data file passed (or has no) checksum but its contents cannot be parsed consistently."""

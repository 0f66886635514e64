"""The character-stream corpus: The Wonderful Wizard of Oz (Project Gutenberg #55).

The task predicts the next character among 27 symbols: the 26 lower-case letters and one symbol
for everything else. :data:`CHARSET` ends with a space, which stands for *every* character that
is not ``a``-``z`` (space, newline, digits, punctuation, curly quotes, accented letters ...), so
decoding codes back gives readable text with word boundaries intact.
"""

from __future__ import annotations

import os

import numpy as np

from .decoded_cache import memoised
from .errors import CorruptDataError
from .fetch import ensure_file
from .gutenberg import normalise_text

__all__ = ["CHARSET", "OTHER", "TEXT_RELPATH", "load_text", "encode_text", "decode_text"]

TEXT_RELPATH = "text/wonderful-wizard-of-oz-pg55.txt"

CHARSET: str = "abcdefghijklmnopqrstuvwxyz "
"""27 symbols; index 26 (a space) stands for every character other than a..z."""

OTHER = 26
"""Code of the catch-all symbol."""

# Byte -> code lookup table; encode_text maps each character to one byte first (non-ASCII
# characters become b"?" via errors="replace", one byte per character), then indexes this table.
_LUT = np.full(256, OTHER, dtype=np.uint8)
_LUT[np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)] = np.arange(26, dtype=np.uint8)


def load_text(*, root: str | os.PathLike[str] | None = None) -> str:
    """The book's body, lower-cased: UTF-8 (BOM dropped), LF line endings, Gutenberg header and
    footer removed when present, outer whitespace stripped. Verified before use (see sources)."""
    path, tag = ensure_file(TEXT_RELPATH, root)

    def build() -> str:
        try:
            return normalise_text(path.read_bytes()).lower()
        except UnicodeDecodeError as exc:
            raise CorruptDataError(f"{TEXT_RELPATH}: not UTF-8 text ({exc}) at {path}. Delete the "
                                   "file and download it again.", path=path) from exc

    return memoised(("text", tag), build)


def encode_text(text: str) -> np.ndarray:
    """uint8 codes: ``a``..``z`` -> 0..25, every other character -> 26 (vectorised).

    Case-sensitive: upper-case letters map to 26, so lower-case the text first (``load_text``
    already does).
    """
    raw = text.encode("ascii", errors="replace")
    return _LUT[np.frombuffer(raw, dtype=np.uint8)]


def decode_text(codes: np.ndarray) -> str:
    """Inverse of :func:`encode_text` up to the catch-all symbol (which decodes to a space)."""
    table = np.frombuffer(CHARSET.encode("ascii"), dtype=np.uint8)
    return table[np.asarray(codes, dtype=np.intp)].tobytes().decode("ascii")

"""Normalisation of a Project Gutenberg plain-text file to its body.

Kept free of other rulegym imports because both the checksum code (which verifies a digest of
the normalised body) and the text loader need it.

Gutenberg publishes no checksums and re-issues its header and licence block from time to time,
so a digest of the raw file would break whenever they do. The *body* between the
``*** START OF ...`` and ``*** END OF ...`` markers is stable, so that is what gets verified.
"""

from __future__ import annotations

import re

__all__ = ["normalise_text", "strip_gutenberg"]

_START = re.compile(r"^\s*\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.IGNORECASE | re.MULTILINE)
_END = re.compile(r"^\s*\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.IGNORECASE | re.MULTILINE)
# Older releases put an "End of (the) Project Gutenberg EBook of ..." line before the END marker.
_END_LINE = re.compile(r"^\s*End of (the )?Project Gutenberg('s)?\b.*$", re.IGNORECASE | re.MULTILINE)


def strip_gutenberg(text: str) -> str:
    """Cut the Gutenberg header and footer when their markers are present, else return as is.

    Expects LF line endings. The result has no leading or trailing whitespace, so that blank
    lines around the markers (which differ between releases) do not change the body.
    """
    start = _START.search(text)
    if start is not None:
        text = text[start.end():]
    end = _END.search(text)
    if end is not None:
        text = text[: end.start()]
        tail = list(_END_LINE.finditer(text))
        if tail and not text[tail[-1].end():].strip():
            text = text[: tail[-1].start()]
    return text.strip()


def normalise_text(raw: bytes) -> str:
    """Decode UTF-8 (dropping a BOM), turn CRLF/CR into LF and strip header/footer.

    Raises ``UnicodeDecodeError`` for bytes that are not UTF-8; callers turn that into a
    ``CorruptDataError`` naming the file.
    """
    text = raw.decode("utf-8-sig")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return strip_gutenberg(text)

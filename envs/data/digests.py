"""Checksums: hashing files, content digests, and verifying a file against its table entry.

Verification happens before any byte of a file is used. Hashing a 30 MB file costs tens of
milliseconds, but environments are created many times per process, so results are memoised
per ``(path, size, mtime_ns)``: a file that is replaced or touched gets hashed again.

Two kinds of digest exist:

* **raw** digests (``md5``/``sha256`` of the file's bytes), the ones publishers list;
* **content** digests, for files whose container may legitimately differ from the published one
  while what we read from it is identical (the re-packed Omniglot zips, the Gutenberg text with
  a re-issued header). See :func:`content_digest` for their exact definitions.

A content digest is expensive for a zip (every member is inflated), so once a container has been
proven to hold the verified content, the pair (container sha256 -> content digest) is recorded in
``cache_dir()/verified.json``. Later processes hash the container (cheap) and accept it when the
record says it holds a content digest that the table accepts. The record is only ever consulted
with a full sha256 of the current bytes, so it cannot vouch for a modified file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import struct
import threading
import zipfile
import zlib
from collections.abc import Iterable

from .errors import ChecksumError, CorruptDataError
from .gutenberg import normalise_text
from .paths import cache_dir
from .sources import CONTENT_PNG_MEMBERS, CONTENT_TEXT_BODY, Source

__all__ = ["hash_file", "content_digest", "verify_file", "clear_digest_memo"]

_CHUNK = 1 << 20
_LOCK = threading.Lock()
_RAW_MEMO: dict[tuple[str, int, int, str], str] = {}
_CONTENT_MEMO: dict[tuple[str, int, int, str], str] = {}
_ATTESTATIONS_FILE = "verified.json"


def _stat_key(path: pathlib.Path) -> tuple[str, int, int]:
    st = path.stat()
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


def clear_digest_memo() -> None:
    """Forget every memoised digest (tests use this; files are re-hashed on next use)."""
    with _LOCK:
        _RAW_MEMO.clear()
        _CONTENT_MEMO.clear()


def hash_file(path: str | os.PathLike[str], algorithms: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """Hex digests of ``path`` for each algorithm, in one chunked pass, memoised per stat."""
    path = pathlib.Path(path)
    key = _stat_key(path)
    wanted = list(dict.fromkeys(algorithms))
    with _LOCK:
        known = {a: _RAW_MEMO[key + (a,)] for a in wanted if key + (a,) in _RAW_MEMO}
    missing = [a for a in wanted if a not in known]
    if missing:
        hashers = {a: hashlib.new(a) for a in missing}
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                for h in hashers.values():
                    h.update(chunk)
        with _LOCK:
            for a, h in hashers.items():
                known[a] = _RAW_MEMO[key + (a,)] = h.hexdigest()
    return {a: known[a] for a in wanted}


#: what reading a damaged zip can raise: a broken deflate stream (zlib.error), a compression
#: method Python cannot read (NotImplementedError, e.g. Deflate64), an encrypted member
#: (RuntimeError), besides zipfile's own errors
ZIP_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError, OSError, ValueError)


def _png_members_digest(path: pathlib.Path, label: str) -> str:
    """sha256 over the zip's ``.png`` members sorted by name.

    For each member, in sorted name order: 8-byte big-endian length of the UTF-8 name, the name,
    8-byte big-endian length of the data, the (decompressed) data. Length prefixes make the
    encoding unambiguous. Directory entries, timestamps, compression and member order in the
    container do not enter the digest, which is the point: a re-packed zip with the original
    images has the same content digest as the original zip.
    """
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(path) as zf:
            infos = sorted((i for i in zf.infolist() if i.filename.lower().endswith(".png")),
                           key=lambda i: i.filename)
            for info in infos:
                name = info.filename.encode("utf-8")
                data = zf.read(info)
                h.update(struct.pack(">Q", len(name)))
                h.update(name)
                h.update(struct.pack(">Q", len(data)))
                h.update(data)
    except ZIP_READ_ERRORS as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CorruptDataError(
            f"{label}: not a readable zip archive ({exc}) at {path}. "
            "Delete the file and download it again.",
            path=path,
        ) from exc
    return h.hexdigest()


def _text_body_digest(path: pathlib.Path, label: str) -> str:
    """sha256 of the UTF-8 bytes of the normalised body (see :mod:`.gutenberg`).

    Normalisation drops a BOM, converts CRLF to LF, cuts the Gutenberg header/footer and strips
    outer whitespace; the case is kept.
    """
    try:
        body = normalise_text(path.read_bytes())
    except UnicodeDecodeError as exc:
        raise CorruptDataError(
            f"{label}: not UTF-8 text ({exc}) at {path}. Delete the file and download it again.",
            path=path,
        ) from exc
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


_CONTENT_KINDS = {CONTENT_PNG_MEMBERS: _png_members_digest, CONTENT_TEXT_BODY: _text_body_digest}


def content_digest(path: str | os.PathLike[str], kind: str, *, label: str | None = None) -> str:
    """Content digest of ``path`` of the given kind, memoised per stat."""
    path = pathlib.Path(path)
    if kind not in _CONTENT_KINDS:
        raise ValueError(f"unknown content digest kind {kind!r}; known: {sorted(_CONTENT_KINDS)}")
    key = _stat_key(path) + (kind,)
    with _LOCK:
        if key in _CONTENT_MEMO:
            return _CONTENT_MEMO[key]
    value = _CONTENT_KINDS[kind](path, label or path.name)
    with _LOCK:
        _CONTENT_MEMO[key] = value
    return value


# ----------------------------------------------------------------------------- attestations

def _attestation_key(source: Source, sha256: str) -> str:
    return f"{source.relpath}|sha256:{sha256}"


def _read_attestations() -> dict[str, str]:
    try:
        data = json.loads((cache_dir() / _ATTESTATIONS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def _write_attestation(key: str, value: str) -> None:
    """Best effort: a cache that cannot be written only costs a re-hash next time."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        data = _read_attestations()
        data[key] = value
        tmp = folder / f".{_ATTESTATIONS_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, folder / _ATTESTATIONS_FILE)
    except OSError:
        pass


# ----------------------------------------------------------------------------- verification

def _fix_hint(source: Source, path: pathlib.Path) -> str:
    where = ", ".join(source.urls) if source.urls else (
        f"the archive {source.archive}" if source.archive else "its official source")
    return (f"Delete {path} and run again to download it afresh from {where} "
            f"(or copy a good copy to that path).")


def verify_file(
    path: str | os.PathLike[str],
    source: Source,
    *,
    extra_sha256: Iterable[str] = (),
    label: str | None = None,
    extra_note: str = "",
) -> str:
    """Check ``path`` against the checksums of ``source`` and return the digest that matched.

    The return value is a tag such as ``"sha256:<hex>"``, ``"md5:<hex>"`` or
    ``"content-sha256:<hex>"``; the decode cache is keyed on it. ``extra_sha256`` adds accepted
    sha256 values (the EMNIST manifest of members extracted from a verified archive).
    ``label`` is the name used in messages (the real file name when ``path`` is a temp file).

    Raises :class:`ChecksumError` when nothing matches, or when no checksum is known at all
    (an unverifiable file is never used silently).
    """
    path = pathlib.Path(path)
    label = label or source.relpath
    sha_ok = {s.lower() for s in source.sha256} | {s.lower() for s in extra_sha256}
    md5_ok = {s.lower() for s in source.md5}
    content_ok = {s.lower() for s in source.content_sha256}
    if not (sha_ok or md5_ok or content_ok):
        raise ChecksumError(
            f"{label}: no checksum is known for this file, so it cannot be verified and is not "
            f"used (at {path}).{(' ' + extra_note) if extra_note else ''} "
            f"{_fix_hint(source, path)}",
            path=path,
        )
    algos = []
    if sha_ok or content_ok:
        algos.append("sha256")  # the content path needs the container sha256 for attestations
    if md5_ok:
        algos.append("md5")
    raw = hash_file(path, algos)
    if raw.get("sha256") in sha_ok:
        return f"sha256:{raw['sha256']}"
    if raw.get("md5") in md5_ok:
        return f"md5:{raw['md5']}"

    content = None
    if content_ok and source.content_kind:
        att_key = _attestation_key(source, raw["sha256"])
        attested = _read_attestations().get(att_key)
        if attested is not None and attested in content_ok:
            return f"content-sha256:{attested}"
        content = content_digest(path, source.content_kind, label=label)
        if content in content_ok:
            _write_attestation(att_key, content)
            return f"content-sha256:{content}"

    expected = []
    if sha_ok:
        expected.append("sha256 " + " or ".join(sorted(sha_ok)))
    if md5_ok:
        expected.append("md5 " + " or ".join(sorted(md5_ok)))
    if content_ok:
        expected.append(f"content digest ({source.content_kind}) " + " or ".join(sorted(content_ok)))
    actual = [f"{a} {v}" for a, v in raw.items()]
    if content is not None:
        actual.append(f"content digest {content}")
    raise ChecksumError(
        f"{label}: checksum mismatch at {path}: expected {'; or '.join(expected)}; "
        f"got {', '.join(actual)}. The file is damaged, incomplete or not the official release, "
        f"so it is not used.{(' ' + extra_note) if extra_note else ''} {_fix_hint(source, path)}",
        path=path,
    )


"""Cache of decoded arrays: on disk as ``.npy`` under :func:`cache_dir`, and in process memory.

Decoding is the slow part of loading (inflating 30 MB of gzip, decoding 19,280 PNGs), while
reading an ``.npy`` is a memory map. Entries are keyed by the *verified* digest of the source
file plus :data:`READER_VERSION`, so a changed source file or a changed reader never meets a stale
entry. Entries are written atomically (temp file + ``os.replace``), and a cache file that fails to
load or has the wrong dtype/shape is discarded and rebuilt: the cache is never trusted blindly and
never the only copy of anything.

The in-process memo lets many environments in one process share one read-only array.
"""

from __future__ import annotations

import os
import pathlib
import re
import tempfile
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

from .paths import cache_dir

__all__ = ["READER_VERSION", "cached_arrays", "memoised", "clear_memo", "entry_dir"]

READER_VERSION = "1"
"""Bump when any decoder changes its output, so old cache entries are ignored."""

T = TypeVar("T")
_MEMO: dict[tuple, Any] = {}
_MEMO_LOCK = threading.RLock()
_KEY_LOCKS: dict[tuple, threading.Lock] = {}


def clear_memo() -> None:
    """Drop the in-process memo (tests use it to force a read from the disk cache)."""
    with _MEMO_LOCK:
        _MEMO.clear()
        _KEY_LOCKS.clear()


def memoised(key: tuple, build: Callable[[], T]) -> T:
    """Return the memoised value for ``key``, building it once (per key, thread-safe)."""
    with _MEMO_LOCK:
        if key in _MEMO:
            return _MEMO[key]
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:
        with _MEMO_LOCK:
            if key in _MEMO:
                return _MEMO[key]
        value = build()
        with _MEMO_LOCK:
            _MEMO[key] = value
        return value


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", part)


def entry_dir(kind: str, digest_tag: str) -> pathlib.Path:
    """Folder of one cache entry: ``<cache>/<kind>/<digest>-r<READER_VERSION>``."""
    algo, _, hexdigest = digest_tag.partition(":")
    return cache_dir() / _safe(kind) / f"{_safe(algo)}-{_safe(hexdigest)}-r{READER_VERSION}"


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


def _load_one(path: pathlib.Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:
        # mmap cannot map zero-length data; small/empty arrays load plainly.
        arr = np.load(path, allow_pickle=False)
    # np.asarray drops the np.memmap subclass but keeps sharing the mapped pages.
    return _readonly(np.asarray(arr))


def _save_atomic(folder: pathlib.Path, name: str, arr: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
        os.replace(tmp, folder / f"{name}.npy")
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def cached_arrays(
    kind: str,
    digest_tag: str,
    fields: tuple[str, ...],
    build: Callable[[], Mapping[str, np.ndarray]],
    check: Callable[[Mapping[str, np.ndarray]], bool],
) -> dict[str, np.ndarray]:
    """Arrays ``fields`` of one decoded source, from the disk cache or from ``build()``.

    ``check`` must return True for arrays of the expected dtype/shape; a cache entry that fails
    it (or fails to load) is discarded and rebuilt. Returned arrays are read-only. A cache
    folder that cannot be written only costs the decode next time (a warning says so).
    """
    folder = entry_dir(kind, digest_tag)
    paths = {f: folder / f"{f}.npy" for f in fields}
    if all(p.is_file() for p in paths.values()):
        try:
            arrays = {f: _load_one(p) for f, p in paths.items()}
            if check(arrays):
                return arrays
        except (OSError, ValueError, EOFError):
            pass
        for p in paths.values():  # stale or corrupt: discard, rebuild below
            try:
                p.unlink()
            except OSError:
                pass
    built = {f: np.asarray(a) for f, a in build().items()}
    try:
        for f in fields:
            _save_atomic(folder, f, built[f])
    except OSError as exc:
        warnings.warn(f"rulegym: could not write the decoded-data cache in {folder} ({exc}); "
                      f"loading will decode again next time. Set RULEGYM_CACHE to a writable "
                      f"folder to fix this.", RuntimeWarning, stacklevel=3)
    return {f: _readonly(built[f]) for f in fields}

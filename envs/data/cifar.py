"""CIFAR-10 from the official ``cifar-10-python.tar.gz``, read in place.

The archive holds Python pickles. Unpickling untrusted data can run arbitrary code, and a
checksum only protects a file when its table entry is right, so the pickles are read with a
*restricted* unpickler: the only globals it resolves are the ones NumPy needs to rebuild an array
(``_reconstruct``, ``ndarray``, ``dtype``); anything else (``os.system``, ``builtins.eval`` ...)
raises :class:`CorruptDataError` before it can be called.

The batches are Python 2 pickles: dict keys are byte strings (``b"data"``, ``b"labels"``) and the
array payload is a Python 2 ``str``, which ``encoding="latin1"`` turns back into the raw bytes
NumPy expects. Keys given as ``str`` are accepted as well.
"""

from __future__ import annotations

import gzip
import io
import pathlib
import pickle
import tarfile
import zlib
from typing import Any

import numpy as np

from .errors import CorruptDataError

__all__ = ["read_cifar10", "safe_unpickle", "TRAIN_BATCHES", "TEST_BATCHES"]

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
_FIX = "Delete the archive and download it again from https://www.cs.toronto.edu/~kriz/cifar.html."

# The array-reconstruction function, found through NumPy itself so that this works whether NumPy
# calls its core package ``numpy.core`` (1.x) or ``numpy._core`` (2.x).
_reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fh: io.BufferedIOBase, label: str) -> None:
        super().__init__(fh, encoding="latin1")
        self._label = label

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CorruptDataError(
                f"{self._label}: the pickle refers to {module}.{name}, which a CIFAR batch never "
                f"contains; it was not loaded (nothing in it was executed). {_FIX}") from None


def safe_unpickle(data: bytes, label: str) -> Any:
    """Unpickle ``data`` allowing only NumPy array reconstruction; errors -> CorruptDataError."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), label).load()
    except CorruptDataError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, TypeError from a bad REDUCE, ...
        raise CorruptDataError(f"{label}: not a valid pickle ({type(exc).__name__}: {exc}). {_FIX}") from exc


def _get(d: dict, key: str) -> Any:
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def _batch_arrays(obj: Any, label: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(obj, dict):
        raise CorruptDataError(f"{label}: expected a dict, found {type(obj).__name__}. {_FIX}")
    data, labels = _get(obj, "data"), _get(obj, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise CorruptDataError(
            f"{label}: 'data' must be a uint8 array of shape (N, 3072), found "
            f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}. {_FIX}")
    try:
        lab = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise CorruptDataError(f"{label}: 'labels' is not a list of integers ({exc}). {_FIX}") from exc
    if lab.shape != (data.shape[0],):
        raise CorruptDataError(
            f"{label}: {data.shape[0]} images but labels of shape {lab.shape}. {_FIX}")
    if lab.size and (lab.min() < 0 or lab.max() > 9):
        raise CorruptDataError(f"{label}: labels outside 0..9 (min {lab.min()}, max {lab.max()}). {_FIX}")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, each plane row-major 32x32.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), lab


def read_cifar10(path: str | pathlib.Path, split: str, *, label: str | None = None) -> dict[str, np.ndarray]:
    """``{"images": uint8 [N,32,32,3], "labels": int64 [N]}`` for ``split`` ("train"/"test").

    Reads the batches straight out of the tar.gz (no extraction to disk), in batch order.
    """
    path = pathlib.Path(path)
    label = label or path.name
    wanted = TRAIN_BATCHES if split == "train" else TEST_BATCHES
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                base = member.name.rsplit("/", 1)[-1]
                if base not in wanted or not member.isfile():
                    continue
                fh = tf.extractfile(member)
                if fh is None:
                    continue
                mlabel = f"{label}:{member.name}"
                found[base] = _batch_arrays(safe_unpickle(fh.read(), mlabel), mlabel)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CorruptDataError(
            f"{label}: the archive is truncated or damaged ({type(exc).__name__}: {exc}) at {path}. {_FIX}",
            path=path) from exc
    missing = [b for b in wanted if b not in found]
    if missing:
        raise CorruptDataError(
            f"{label}: the archive lacks {', '.join(missing)} (looked for cifar-10-batches-py/"
            f"<batch>) at {path}. {_FIX}", path=path)
    images = np.concatenate([found[b][0] for b in wanted])
    labels = np.concatenate([found[b][1] for b in wanted])
    return {"images": images, "labels": labels}


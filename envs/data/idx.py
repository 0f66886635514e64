"""Reader for the IDX format of MNIST and its relatives (Fashion-MNIST, KMNIST, EMNIST).

Format (http://yann.lecun.com/exdb/mnist/): a 4-byte big-endian magic number
``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the data in C order,
big-endian. Type codes: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64. Label files are ``0x0801`` (1-D uint8), image files ``0x0803`` (N x rows x cols).

Every inconsistency (bad magic, body shorter or longer than the header says, broken gzip stream)
raises :class:`CorruptDataError` naming the file, rather than producing a misshapen array.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import struct
import zlib

import numpy as np

from .errors import CorruptDataError

__all__ = ["IDX_DTYPES", "read_idx", "read_idx_header", "parse_idx"]

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_FIX = "Delete the file and download it again."


def _open(path: pathlib.Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_bytes(path: pathlib.Path, label: str, limit: int = -1) -> bytes:
    try:
        with _open(path) as fh:
            return fh.read(limit)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise CorruptDataError(
            f"{label}: the gzip stream is truncated or damaged ({type(exc).__name__}: {exc}) at "
            f"{path}. {_FIX}", path=path) from exc


def _parse_header(buf: bytes, label: str, path: pathlib.Path | None) -> tuple[np.dtype, tuple[int, ...], int]:
    if len(buf) < 4:
        raise CorruptDataError(f"{label}: file is too short to hold an IDX header "
                               f"({len(buf)} bytes){f' at {path}' if path else ''}. {_FIX}", path=path)
    zero0, zero1, code, ndim = buf[0], buf[1], buf[2], buf[3]
    if zero0 != 0 or zero1 != 0 or code not in IDX_DTYPES or ndim == 0:
        raise CorruptDataError(
            f"{label}: bad IDX magic number 0x{buf[:4].hex()} (expected 0x0000TTNN with a known type "
            f"code TT in {sorted(hex(c) for c in IDX_DTYPES)} and NN >= 1 dimensions)"
            f"{f' at {path}' if path else ''}. Is this an IDX file? {_FIX}", path=path)
    header_len = 4 + 4 * ndim
    if len(buf) < header_len:
        raise CorruptDataError(f"{label}: IDX header is truncated (needs {header_len} bytes, file "
                               f"has {len(buf)}){f' at {path}' if path else ''}. {_FIX}", path=path)
    dims = struct.unpack(f">{ndim}I", buf[4:header_len])
    return IDX_DTYPES[code], tuple(int(d) for d in dims), header_len


def read_idx_header(path: str | os.PathLike[str], *, label: str | None = None) -> tuple[np.dtype, tuple[int, ...]]:
    """``(dtype, dims)`` from the header only (cheap even for a large .gz: reads ~16 bytes)."""
    path = pathlib.Path(path)
    label = label or path.name
    buf = _read_bytes(path, label, 4 + 4 * 255)
    dtype, dims, _ = _parse_header(buf, label, path)
    return dtype, dims


def parse_idx(buf: bytes, *, label: str = "IDX data", path: pathlib.Path | None = None) -> np.ndarray:
    """Array (native byte order) from the bytes of a whole IDX file."""
    dtype, dims, header_len = _parse_header(buf, label, path)
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    body = len(buf) - header_len
    if body != expected:
        what = "truncated" if body < expected else "longer than its header says"
        raise CorruptDataError(
            f"{label}: IDX body is {what}: header dims {dims} x {dtype.itemsize} bytes need "
            f"{expected} bytes, found {body}{f' at {path}' if path else ''}. {_FIX}", path=path)
    arr = np.frombuffer(buf, dtype=dtype, count=expected // dtype.itemsize, offset=header_len)
    arr = arr.reshape(dims)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def read_idx(path: str | os.PathLike[str], *, label: str | None = None,
             expect_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed when its name ends in ``.gz``).

    ``expect_ndim`` guards against swapped files (a label file where images are expected).
    """
    path = pathlib.Path(path)
    label = label or path.name
    arr = parse_idx(_read_bytes(path, label), label=label, path=path)
    if expect_ndim is not None and arr.ndim != expect_ndim:
        raise CorruptDataError(
            f"{label}: expected a {expect_ndim}-dimensional IDX array, found shape {arr.shape} at "
            f"{path}. Check that the file is the right one (images vs labels). {_FIX}", path=path)
    return arr

"""Labelled image datasets: MNIST, Fashion-MNIST, KMNIST, EMNIST, CIFAR-10 and sklearn digits.

All of them come back as one :class:`ImageSet` shape, so that the image-stream environments need
not know which dataset they show: uint8 pixels (``[N, H, W]`` grey or ``[N, H, W, 3]`` colour),
upright, read-only, and int64 labels ``0..n_classes-1``.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

import numpy as np

from . import cifar, class_names, idx
from .decoded_cache import cached_arrays, memoised
from .errors import CorruptDataError, DataError
from .fetch import ensure_file
from .paths import resolve_data_root
from .sources import EMNIST_ARCHIVE, EMNIST_VARIANTS

__all__ = ["ImageSet", "load_image_dataset", "DATASETS", "SPLITS"]

DATASETS = ("mnist", "fashion_mnist", "kmnist", "emnist", "cifar10", "digits")
SPLITS = ("train", "test")
_DIGITS_SPLITS = ("train", "test", "all")
_DIGITS_TRAIN = 1437  # first 1437 of sklearn's 1797 samples; the last 360 are "test"

# name -> (folder in the data root, class names); n_classes = len(class names)
_IDX_DATASETS = {
    "mnist": ("mnist", class_names.DIGITS),
    "fashion_mnist": ("fashion-mnist", class_names.FASHION_MNIST),
    "kmnist": ("kmnist", class_names.KMNIST),
}


@dataclass(frozen=True, eq=False)
class ImageSet:
    """One split of a labelled image dataset.

    ``images`` is uint8 ``[N, H, W]`` (grey) or ``[N, H, W, 3]`` (colour) in upright orientation
    (EMNIST is transposed back from its stored column-major layout); ``labels`` is int64 ``[N]``
    in ``0..n_classes-1``. Both arrays are read-only because one copy is shared by every
    environment in the process (and memory-mapped from the decode cache).
    ``eq=False``: comparing two sets element-wise is never what ``==`` should mean.
    """

    images: np.ndarray
    labels: np.ndarray
    n_classes: int
    name: str
    split: str
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


def _check_choice(what: str, value: object, valid: tuple[str, ...], context: str = "") -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}{context}; valid: {', '.join(valid)}")


# ------------------------------------------------------------------------------ IDX files

def _idx_array(path: pathlib.Path, tag: str, relpath: str, *, ndim: int, transpose: bool) -> np.ndarray:
    """Decoded IDX array of a verified file, through the disk cache.

    EMNIST images are cached already transposed (upright), so the contiguous cached array is
    what the environments use.
    """
    kind = "idx-upright" if transpose else "idx"

    def build() -> dict[str, np.ndarray]:
        arr = idx.read_idx(path, label=relpath, expect_ndim=ndim)
        if transpose:
            arr = np.ascontiguousarray(arr.transpose(0, 2, 1))
        return {"data": arr}

    def check(arrays) -> bool:
        dtype, dims = idx.read_idx_header(path, label=relpath)
        if transpose and len(dims) == 3:
            dims = (dims[0], dims[2], dims[1])
        a = arrays["data"]
        return a.dtype == dtype.newbyteorder("=") and a.shape == dims

    return memoised((kind, tag), lambda: cached_arrays(kind, tag, ("data",), build, check)["data"])


def _load_idx_pair(name: str, split: str, image_rel: str, label_rel: str, root,
                   *, n_classes: int, names: tuple[str, ...], transpose: bool = False,
                   label_offset: int = 0) -> ImageSet:
    image_path, image_tag = ensure_file(image_rel, root)
    label_path, label_tag = ensure_file(label_rel, root)

    def build() -> ImageSet:
        images = _idx_array(image_path, image_tag, image_rel, ndim=3, transpose=transpose)
        raw_labels = _idx_array(label_path, label_tag, label_rel, ndim=1, transpose=False)
        if images.dtype != np.uint8:
            raise CorruptDataError(f"{image_rel}: expected uint8 pixels, found {images.dtype} at "
                                   f"{image_path}. Delete the file and download it again.", path=image_path)
        if images.shape[0] != raw_labels.shape[0]:
            raise CorruptDataError(
                f"{image_rel} holds {images.shape[0]} images but {label_rel} holds "
                f"{raw_labels.shape[0]} labels (at {image_path} and {label_path}); the two files do "
                "not belong together. Delete both and download them again.", path=image_path)
        labels = raw_labels.astype(np.int64) - label_offset
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            raise CorruptDataError(
                f"{label_rel}: labels must lie in {label_offset}..{n_classes - 1 + label_offset}, "
                f"found {labels.min() + label_offset}..{labels.max() + label_offset} at {label_path}. "
                "Delete the file and download it again.", path=label_path)
        return ImageSet(images, _readonly(labels), n_classes, name, split, names)

    return memoised(("imageset", name, split, image_tag, label_tag, transpose, label_offset, names), build)


def _emnist_class_names(variant: str, root) -> tuple[str, ...]:
    """From ``emnist-<variant>-mapping.txt`` when present (or extractable from a local archive),
    else the known table. A mapping file that is present but fails its checksum is an error."""
    rel = f"emnist/emnist-{variant}-mapping.txt"
    table = class_names.EMNIST[variant]
    root_path = resolve_data_root(root)
    if not (root_path / rel).is_file() and not (root_path / EMNIST_ARCHIVE).is_file():
        return table
    try:
        path, _ = ensure_file(rel, root_path)
    except DataError:
        if (root_path / rel).is_file():
            raise
        return table  # could not extract it from the archive: the table says the same
    return class_names.parse_emnist_mapping(path, label_offset=1 if variant == "letters" else 0,
                                            n_classes=len(table))


# ------------------------------------------------------------------------------ datasets

def _load_digits(split: str) -> ImageSet:
    def build() -> ImageSet:
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no network, no root

        bunch = load_digits()
        pixels = np.asarray(bunch.images, dtype=np.float64)  # 0..16
        images = np.rint(pixels * 255.0 / 16.0).astype(np.uint8)
        labels = np.asarray(bunch.target, dtype=np.int64)
        if split == "train":
            images, labels = images[:_DIGITS_TRAIN], labels[:_DIGITS_TRAIN]
        elif split == "test":
            images, labels = images[_DIGITS_TRAIN:], labels[_DIGITS_TRAIN:]
        return ImageSet(_readonly(np.ascontiguousarray(images)), _readonly(np.ascontiguousarray(labels)),
                        10, "digits", split, class_names.DIGITS)

    return memoised(("imageset", "digits", split), build)


def _load_cifar10(split: str, root) -> ImageSet:
    rel = "cifar-10/cifar-10-python.tar.gz"
    path, tag = ensure_file(rel, root)
    kind = f"cifar10-{split}"

    def build_arrays() -> dict[str, np.ndarray]:
        return cifar.read_cifar10(path, split, label=rel)

    def check(arrays) -> bool:
        im, lab = arrays["images"], arrays["labels"]
        return (im.dtype == np.uint8 and im.ndim == 4 and im.shape[1:] == (32, 32, 3)
                and lab.dtype == np.int64 and lab.shape == (im.shape[0],)
                and (lab.size == 0 or (int(lab.min()) >= 0 and int(lab.max()) <= 9)))

    def build() -> ImageSet:
        arrays = cached_arrays(kind, tag, ("images", "labels"), build_arrays, check)
        return ImageSet(arrays["images"], arrays["labels"], 10, "cifar10", split, class_names.CIFAR10)

    return memoised(("imageset", "cifar10", split, tag), build)


def load_image_dataset(name: str, split: str = "train", *, root: str | os.PathLike[str] | None = None,
                       variant: str | None = None) -> ImageSet:
    """Load one split of an image dataset, verified, decoded and cached.

    ``name``: ``mnist``, ``fashion_mnist``, ``kmnist``, ``emnist``, ``cifar10`` or ``digits``.
    ``split``: ``train`` or ``test`` (``digits`` also ``all``: sklearn's 1,797 images, of which
    the first 1,437 are ``train`` and the last 360 ``test``; it needs no data root).
    ``variant`` (EMNIST only): ``byclass`` (default), ``bymerge``, ``balanced``, ``letters``
    (labels 1..26 shifted to 0..25), ``digits`` or ``mnist``.
    ``root``: data root, see :func:`resolve_data_root`.

    Raises ``ValueError`` for an unknown name/split/variant, and :class:`DataError` subclasses
    for missing, mismatching or corrupt files.
    """
    _check_choice("dataset", name, DATASETS)
    if name == "digits":
        _check_choice("split", split, _DIGITS_SPLITS, " for digits")
    else:
        _check_choice("split", split, SPLITS, f" for {name}")
    if name != "emnist" and variant is not None:
        raise ValueError(f"variant={variant!r} is only meaningful for emnist; pass variant=None for {name}")

    if name == "digits":
        return _load_digits(split)
    if name == "cifar10":
        return _load_cifar10(split, root)
    if name == "emnist":
        variant = "byclass" if variant is None else variant
        _check_choice("EMNIST variant", variant, EMNIST_VARIANTS)
        prefix = f"emnist/emnist-{variant}-{split}"
        image_rel, label_rel = f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"
        # Obtain the data files first: if they come from the archive, the mapping file can then
        # be extracted from the same (now local) archive.
        ensure_file(image_rel, root)
        ensure_file(label_rel, root)
        names = _emnist_class_names(variant, root)
        return _load_idx_pair(name, split, image_rel, label_rel,
                              root, n_classes=len(names), names=names, transpose=True,
                              label_offset=1 if variant == "letters" else 0)
    folder, names = _IDX_DATASETS[name]
    prefix = f"{folder}/{'train' if split == 'train' else 't10k'}"
    return _load_idx_pair(name, split, f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz",
                          root, n_classes=len(names), names=names)

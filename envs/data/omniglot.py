"""Omniglot (Lake et al. 2015) from the official ``images_{background,evaluation}.zip``.

The zips are read in place (no unpacking to disk): member paths are
``images_<split>/<Alphabet>/characterNN/NNNN_YY.png``, each a 105x105 1-bit PNG with white (1)
background and black (0) strokes. Images are inverted so that strokes are 255 and background 0,
which is what a network fed raw pixels wants (sparse activity, zero = nothing drawn).

Characters are numbered 0..n_classes-1 in sorted (alphabet, character) order within a split;
images within a character in sorted file-name order.
"""

from __future__ import annotations

import io
import os
import pathlib
import zipfile
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from .decoded_cache import cached_arrays, memoised
from .digests import ZIP_READ_ERRORS
from .errors import CorruptDataError
from .fetch import ensure_file

__all__ = ["OmniglotSet", "load_omniglot", "OMNIGLOT_SPLITS", "IMAGE_SIZE"]

OMNIGLOT_SPLITS = ("background", "evaluation")
IMAGE_SIZE = 105
_FIX = ("Delete the file and download it again from "
        "https://github.com/brendenlake/omniglot/tree/master/python.")


@dataclass(frozen=True, eq=False)
class OmniglotSet:
    """One Omniglot split.

    ``images`` uint8 ``[N, 105, 105]`` with strokes 255 and background 0 (read-only);
    ``labels`` int64 character class ``0..n_classes-1``; ``alphabets`` int64 index into
    ``alphabet_names``. ``eq=False`` for the same reason as :class:`ImageSet`.
    """

    images: np.ndarray
    labels: np.ndarray
    alphabets: np.ndarray
    alphabet_names: tuple[str, ...]
    n_classes: int
    split: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _index(path: pathlib.Path, label: str) -> tuple[list[str], np.ndarray, np.ndarray, tuple[str, ...]]:
    """Sorted PNG member names with their character and alphabet indices (from names only)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.lower().endswith(".png")]
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CorruptDataError(f"{label}: not a readable zip archive ({exc}) at {path}. {_FIX}", path=path) from exc
    keyed = []
    for n in names:
        parts = [p for p in n.split("/") if p]
        if any(p.startswith(("__MACOSX", ".")) for p in parts):
            continue  # archiver junk, not images
        if len(parts) < 3:
            raise CorruptDataError(
                f"{label}: member {n!r} is not laid out as <alphabet>/<character>/<file>.png at {path}. {_FIX}",
                path=path)
        keyed.append(((parts[-3], parts[-2], parts[-1]), n))
    if not keyed:
        raise CorruptDataError(f"{label}: the archive holds no PNG images at {path}. {_FIX}", path=path)
    keyed.sort()
    alphabet_names = tuple(sorted({k[0] for k, _ in keyed}))
    alpha_of = {a: i for i, a in enumerate(alphabet_names)}
    chars = sorted({(k[0], k[1]) for k, _ in keyed})
    char_of = {c: i for i, c in enumerate(chars)}
    labels = np.array([char_of[(k[0], k[1])] for k, _ in keyed], dtype=np.int64)
    alphabets = np.array([alpha_of[k[0]] for k, _ in keyed], dtype=np.int64)
    return [n for _, n in keyed], labels, alphabets, alphabet_names


def decode_pngs(path: pathlib.Path, members: list[str], label: str) -> np.ndarray:
    """Decode the members into ``uint8 [N, 105, 105]``, strokes 255 / background 0."""
    out = np.empty((len(members), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    try:
        with zipfile.ZipFile(path) as zf:
            for i, name in enumerate(members):
                data = zf.read(name)
                try:
                    with Image.open(io.BytesIO(data)) as im:
                        if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                            raise CorruptDataError(
                                f"{label}: {name} is {im.size[0]}x{im.size[1]}, expected "
                                f"{IMAGE_SIZE}x{IMAGE_SIZE} at {path}. {_FIX}", path=path)
                        if im.mode == "1":
                            ink = ~np.asarray(im, dtype=bool)  # False (black) = stroke
                        else:
                            ink = np.asarray(im.convert("L")) < 128
                except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                    if isinstance(exc, CorruptDataError):
                        raise
                    raise CorruptDataError(
                        f"{label}: {name} is not a valid PNG ({exc}) at {path}. {_FIX}", path=path) from exc
                out[i] = ink
    except ZIP_READ_ERRORS as exc:
        if isinstance(exc, (CorruptDataError, FileNotFoundError)):
            raise
        raise CorruptDataError(f"{label}: not a readable zip archive ({exc}) at {path}. {_FIX}", path=path) from exc
    out *= 255
    return out


def load_omniglot(split: str = "background", *, root: str | os.PathLike[str] | None = None) -> OmniglotSet:
    """Load the ``background`` (30 alphabets, 964 characters) or ``evaluation`` (20 alphabets,
    659 characters) split; 20 drawings per character. See the module docstring for layout."""
    if split not in OMNIGLOT_SPLITS:
        raise ValueError(f"unknown Omniglot split {split!r}; valid: {', '.join(OMNIGLOT_SPLITS)}")
    rel = f"omniglot/images_{split}.zip"
    path, tag = ensure_file(rel, root)

    def decode() -> dict[str, np.ndarray]:
        members, labels, alphabets, alphabet_names = _index(path, rel)
        return {"images": decode_pngs(path, members, rel), "labels": labels, "alphabets": alphabets,
                "alphabet_names": np.array(alphabet_names, dtype=str)}

    def check(arrays) -> bool:
        im, lab, alpha, names = (arrays[k] for k in ("images", "labels", "alphabets", "alphabet_names"))
        n = im.shape[0] if im.ndim == 3 else -1
        return (im.dtype == np.uint8 and im.shape == (n, IMAGE_SIZE, IMAGE_SIZE) and n > 0
                and lab.dtype == np.int64 and lab.shape == (n,)
                and alpha.dtype == np.int64 and alpha.shape == (n,)
                and names.dtype.kind == "U" and names.ndim == 1
                and int(lab.min()) == 0 and int(alpha.min()) == 0 and int(alpha.max()) < names.shape[0])

    def build() -> OmniglotSet:
        # The index (names -> labels) is cached with the pixels: parsing a 20k-entry zip
        # directory costs more than memory-mapping the cached arrays.
        a = cached_arrays(f"omniglot-{split}", tag, ("images", "labels", "alphabets", "alphabet_names"),
                          decode, check)
        names = tuple(str(x) for x in a["alphabet_names"])
        return OmniglotSet(a["images"], a["labels"], a["alphabets"], names, int(a["labels"].max()) + 1, split)

    return memoised(("omniglot", split, tag), build)

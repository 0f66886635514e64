"""Class-name tables of the image datasets, and the parser for EMNIST mapping files.

The tables are the fallback when a dataset's own metadata (EMNIST ``*-mapping.txt``) is not on
disk; they repeat what the publishers document.
"""

from __future__ import annotations

import pathlib
import string

from .errors import CorruptDataError

__all__ = ["DIGITS", "FASHION_MNIST", "KMNIST", "CIFAR10", "EMNIST", "parse_emnist_mapping"]

DIGITS: tuple[str, ...] = tuple(string.digits)

FASHION_MNIST: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# Hiragana o, ki, su, tsu, na, ha, ma, ya, re, wo (rois-codh/kmnist kmnist_classmap.csv).
KMNIST: tuple[str, ...] = ("お", "き", "す", "つ", "な", "は", "ま", "や", "れ", "を")

CIFAR10: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

_UPPER = tuple(string.ascii_uppercase)
_LOWER = tuple(string.ascii_lowercase)
# ByMerge/Balanced merge the 15 case-ambiguous letters into the upper case; these 11 lower-case
# letters stay separate.
_MERGED_LOWER = tuple("abdefghnqrt")

EMNIST: dict[str, tuple[str, ...]] = {
    "byclass": DIGITS + _UPPER + _LOWER,
    "bymerge": DIGITS + _UPPER + _MERGED_LOWER,
    "balanced": DIGITS + _UPPER + _MERGED_LOWER,
    # Letters merges the cases: one class per letter, named by both cases ("Aa").
    "letters": tuple(u + l for u, l in zip(_UPPER, _LOWER)),
    "digits": DIGITS,
    "mnist": DIGITS,
}


def parse_emnist_mapping(path: pathlib.Path, *, label_offset: int, n_classes: int) -> tuple[str, ...]:
    """Class names from an EMNIST mapping file (lines ``<label> <ascii code> [<ascii code>...]``).

    ``label_offset`` is subtracted from the file's labels (1 for Letters, whose labels start at
    1). The labels must be exactly ``0..n_classes-1`` after the shift.
    """
    names: dict[int, str] = {}
    try:
        text = path.read_text(encoding="ascii")
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            fields = [int(x) for x in line.split()]
            if len(fields) < 2:
                raise ValueError(f"line {lineno} has fewer than 2 fields")
            names[fields[0] - label_offset] = "".join(chr(c) for c in fields[1:])
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptDataError(
            f"{path.name}: not a valid EMNIST mapping file ({exc}) at {path}. Delete it and "
            "extract it again from the EMNIST gzip.zip.", path=path) from exc
    if sorted(names) != list(range(n_classes)):
        raise CorruptDataError(
            f"{path.name}: expected labels 0..{n_classes - 1} (after subtracting {label_offset}), "
            f"found {sorted(names)[:5]}... ({len(names)} labels) at {path}. Delete it and extract it "
            "again from the EMNIST gzip.zip.", path=path)
    return tuple(names[i] for i in range(n_classes))

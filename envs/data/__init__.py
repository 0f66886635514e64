"""Datasets for rulegym's online-learning streams, read from their original distribution files.

Files live under a data root (the ``root=`` argument, else ``$RULEGYM_DATA``, else
``~/.cache/rulegym/data``) in the layout of ``../shared/data``. Every file is checked against a
published checksum before use; a missing file is downloaded from its official source when the
network is allowed (``RULEGYM_OFFLINE=1`` forbids it), and decoded arrays are cached as ``.npy``
under ``$RULEGYM_CACHE`` (else ``~/.cache/rulegym/decoded``). ``load_image_dataset("digits")``
needs no data root at all: it is scikit-learn's bundled copy, the embedded default.

Modules: :mod:`.sources` (the checksum/URL table), :mod:`.digests` (verification),
:mod:`.fetch` (download/extract), :mod:`.idx`, :mod:`.cifar`, :mod:`.omniglot`, :mod:`.text`
(readers), :mod:`.decoded_cache`, :mod:`.images` (the image-set API), :mod:`.errors`.
"""

from .errors import ChecksumError, CorruptDataError, DataError, MissingDataError
from .images import ImageSet, load_image_dataset
from .omniglot import OmniglotSet, load_omniglot
from .paths import cache_dir, resolve_data_root
from .text import CHARSET, encode_text, load_text

__all__ = [
    "DataError",
    "MissingDataError",
    "ChecksumError",
    "CorruptDataError",
    "resolve_data_root",
    "cache_dir",
    "ImageSet",
    "load_image_dataset",
    "OmniglotSet",
    "load_omniglot",
    "load_text",
    "CHARSET",
    "encode_text",
]

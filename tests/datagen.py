"""Small generated dataset files in the original distribution formats, for tests.

CIFAR-10 is not in the shared data folder, so its reader and env are tested on archives
built here in the official layout (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``).
"""

from __future__ import annotations

import io
import pathlib
import pickle
import tarfile

import numpy as np


def cifar_tar(path: pathlib.Path, batches: dict[str, bytes]) -> pathlib.Path:
    """A ``cifar-10-python.tar.gz`` holding the given member payloads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, payload in batches.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return path


def cifar_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[int]]:
    """Random channel-first rows of 3072 bytes and labels, as in a CIFAR-10 batch."""
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), rng.integers(0, 10, size=n).tolist()


def write_cifar10(path: pathlib.Path, rng: np.random.Generator, per_batch: int = 3, n_test: int = 4):
    """A complete small CIFAR-10 archive; returns {member: (rows, labels)}."""
    content, payloads = {}, {}
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        content[name] = cifar_batch(rng, n)
        payloads[name] = pickle.dumps(
            {b"batch_label": b"x", b"data": content[name][0], b"labels": content[name][1], b"filenames": [b"a"] * n},
            protocol=4,
        )
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    payloads["batches.meta"] = pickle.dumps({b"label_names": names}, protocol=4)
    cifar_tar(path, payloads)
    return content

"""Image classification streams: MNIST, Fashion-MNIST, KMNIST, EMNIST, CIFAR-10, digits.

One lifetime is a stream of examples drawn without replacement from a dataset split (cycling
through fresh permutations when the lifetime is longer than the split), optionally restricted
to a class subset, with a per-lifetime label permutation, pixel permutation and random
projection.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rulegym.envs import data
from rulegym.envs.image_inputs import ImageInputs, dataset_bank, parse_resize
from rulegym.envs.protocol import Instance, Task, check_flag, check_length

DATASETS = ("mnist", "fashion_mnist", "kmnist", "emnist", "cifar10", "digits")


def stream_order(rng: np.random.Generator, pool: np.ndarray, length: int) -> np.ndarray:
    """``length`` items of ``pool`` without replacement, in fresh permutations as needed."""
    n = pool.shape[0]
    if length <= n:
        return pool[rng.choice(n, size=length, replace=False)]
    reps = -(-length // n)
    return np.concatenate([pool[rng.permutation(n)] for _ in range(reps)])[:length]


class ImageStreamTask(Task):
    """A stream of labelled images from one dataset split.

    Options: ``split``, ``lifetime_length``, ``normalize`` ("standard": zero mean and unit
    variance with the split's pixel statistics; "unit": [0, 1]), ``resize`` (int or (h, w)),
    ``flatten`` (else x is [C, H, W]), ``random_projection``, ``permute_pixels``,
    ``permute_labels``, ``classes`` (a fixed subset, relabelled 0..k-1 in the given order) and
    ``num_classes`` (a random subset of that size drawn per lifetime, relabelled in draw order).
    """

    def __init__(
        self,
        dataset: str,
        split: str = "train",
        *,
        variant: str | None = None,
        root: str | None = None,
        lifetime_length: int = 500,
        normalize: str = "standard",
        resize: int | Sequence[int] | None = None,
        flatten: bool = True,
        random_projection: bool = False,
        permute_pixels: bool = False,
        permute_labels: bool = False,
        classes: Sequence[int] | None = None,
        num_classes: int | None = None,
    ):
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}.")
        self.dataset, self.split, self.variant = dataset, split, variant
        self.lifetime_length = check_length(lifetime_length)
        size = parse_resize(resize if not isinstance(resize, list) else tuple(resize))
        bank = dataset_bank(dataset, split, variant, str(data.resolve_data_root(root)), size)
        self.bank = bank
        self.inputs = ImageInputs(
            bank, normalize=normalize, flatten=flatten, permute_pixels=permute_pixels, random_projection=random_projection
        )
        self.x_shape, self.x_bound = self.inputs.x_shape, self.inputs.x_bound
        if classes is None:
            pool_classes = np.arange(bank.n_classes)
        else:
            classes = list(classes)
            if not all(isinstance(c, (int, np.integer)) and not isinstance(c, (bool, np.bool_)) for c in classes):
                raise ValueError(f"classes must list integer class indices, got {classes!r}.")
            pool_classes = np.asarray(classes, dtype=np.int64)
            if pool_classes.ndim != 1 or pool_classes.size < 2 or len(set(pool_classes.tolist())) != pool_classes.size:
                raise ValueError(f"classes must list at least two distinct class indices, got {classes!r}.")
            if pool_classes.min() < 0 or pool_classes.max() >= bank.n_classes:
                raise ValueError(f"classes must lie in 0..{bank.n_classes - 1} for {dataset}, got {classes!r}.")
        empty = [int(c) for c in pool_classes if bank.by_class[c].size == 0]
        if empty:
            raise ValueError(f"classes {empty} have no examples in {dataset}/{split}; choose other classes.")
        self.pool_classes = pool_classes
        if num_classes is not None and (not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, (bool, np.bool_))
                                        or not 2 <= num_classes <= pool_classes.size):
            raise ValueError(f"num_classes must be between 2 and {pool_classes.size}, got {num_classes!r}.")
        self.num_classes = num_classes
        self.permute_labels = check_flag("permute_labels", permute_labels)
        self.n_classes = int(num_classes if num_classes is not None else pool_classes.size)
        self._fixed_pool = np.concatenate([bank.by_class[c] for c in pool_classes])
        self._label_map = np.full(bank.n_classes, -1, dtype=np.int64)
        self._label_map[pool_classes] = np.arange(pool_classes.size)

    def sample_instance(self, rng: np.random.Generator) -> Instance:
        if self.num_classes is None:
            pool, label_map = self._fixed_pool, self._label_map.copy()
        else:
            chosen = rng.choice(self.pool_classes, size=self.num_classes, replace=False)
            pool = np.concatenate([self.bank.by_class[c] for c in chosen])
            label_map = np.full(self.bank.n_classes, -1, dtype=np.int64)
            label_map[chosen] = np.arange(self.num_classes)
        if self.permute_labels:
            perm = rng.permutation(self.n_classes)
            label_map = np.where(label_map >= 0, perm[label_map], -1)
        inst = {"order": stream_order(rng, pool, self.lifetime_length).astype(np.int64), "label_map": label_map}
        inst.update(self.inputs.sample(rng))
        return inst

    def observe(self, inst: Instance, t: np.ndarray):
        b = np.arange(t.shape[0])
        rows = inst["order"][b, t]
        x = self.inputs.apply(inst, rows)
        y = inst["label_map"][b, self.bank.labels[rows]]
        return x, y, np.ones(t.shape[0], dtype=bool)

    def describe(self):
        return {
            **super().describe(),
            "dataset": self.dataset,
            "split": self.split,
            "variant": self.variant,
            "random_projection": self.inputs.random_projection,
            "permute_pixels": self.inputs.permute_pixels,
            "permute_labels": self.permute_labels,
        }

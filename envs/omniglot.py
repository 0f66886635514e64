"""Omniglot N-way K-shot episodes as an online stream.

An episode shows N*K support images in shuffled order (their labels arrive one step later, as
in every rulegym stream) and then the query images, drawn from the same N classes; only the
queries count (``loss_mask``). Classes are drawn afresh and relabelled 0..N-1 in every
episode, so nothing but the within-episode labels can be learned. A lifetime holds one or more
episodes back to back. The background alphabets are the training split, the evaluation
alphabets (unseen characters and alphabets) the test split.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rulegym.envs import data
from rulegym.envs.image_inputs import ImageInputs, omniglot_bank, parse_resize
from rulegym.envs.protocol import Instance, Task

SPLITS = {"train": "background", "test": "evaluation", "background": "background", "evaluation": "evaluation"}


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


class OmniglotTask(Task):
    """``ways``-way ``shots``-shot episodes with ``queries`` query steps each.

    Options besides the episode shape: ``split`` ("train"/"background" or
    "test"/"evaluation"), ``episodes`` per lifetime, ``resize`` (default 28x28), ``normalize``,
    ``flatten``, ``random_projection``, ``permute_pixels``.
    """

    def __init__(
        self,
        split: str = "train",
        *,
        ways: int = 5,
        shots: int = 1,
        queries: int = 1,
        episodes: int = 1,
        root: str | None = None,
        normalize: str = "standard",
        resize: int | Sequence[int] | None = 28,
        flatten: bool = True,
        random_projection: bool = False,
        permute_pixels: bool = False,
    ):
        if split not in SPLITS:
            raise ValueError(f"unknown Omniglot split {split!r}; valid: {', '.join(SPLITS)}.")
        self.split = SPLITS[split]
        self.ways, self.shots = _positive("ways", ways), _positive("shots", shots)
        self.queries, self.episodes = _positive("queries", queries), _positive("episodes", episodes)
        if self.ways < 2:
            raise ValueError(f"ways must be at least 2, got {ways}.")
        size = parse_resize(resize if not isinstance(resize, list) else tuple(resize))
        self.bank = omniglot_bank(self.split, str(data.resolve_data_root(root)), size)
        per_class = min(len(ix) for ix in self.bank.by_class)
        if self.shots + self.queries > per_class:
            raise ValueError(
                f"shots + queries = {self.shots + self.queries} exceeds the {per_class} drawings per Omniglot character."
            )
        if self.ways > self.bank.n_classes:
            raise ValueError(f"ways={ways} exceeds the {self.bank.n_classes} characters of the {self.split} split.")
        self.inputs = ImageInputs(
            self.bank, normalize=normalize, flatten=flatten, permute_pixels=permute_pixels, random_projection=random_projection
        )
        self.x_shape, self.x_bound = self.inputs.x_shape, self.inputs.x_bound
        self.n_classes = self.ways
        self.episode_length = self.ways * self.shots + self.queries
        self.lifetime_length = self.episodes * self.episode_length

    def _episode(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        classes = rng.choice(self.bank.n_classes, size=self.ways, replace=False)
        query_labels = rng.integers(self.ways, size=self.queries)
        support_rows, support_labels, query_rows = [], [], np.empty(self.queries, dtype=np.int64)
        for label, c in enumerate(classes):
            asked = np.flatnonzero(query_labels == label)
            drawn = rng.choice(self.bank.by_class[c], size=self.shots + asked.size, replace=False)
            support_rows.append(drawn[: self.shots])
            support_labels.append(np.full(self.shots, label))
            query_rows[asked] = drawn[self.shots :]
        shuffle = rng.permutation(self.ways * self.shots)
        rows = np.concatenate([np.concatenate(support_rows)[shuffle], query_rows])
        labels = np.concatenate([np.concatenate(support_labels)[shuffle], query_labels])
        mask = np.arange(self.episode_length) >= self.ways * self.shots
        return rows, labels, mask

    def sample_instance(self, rng: np.random.Generator) -> Instance:
        parts = [self._episode(rng) for _ in range(self.episodes)]
        inst = {
            "order": np.concatenate([p[0] for p in parts]).astype(np.int64),
            "labels": np.concatenate([p[1] for p in parts]).astype(np.int64),
            "mask": np.concatenate([p[2] for p in parts]),
        }
        inst.update(self.inputs.sample(rng))
        return inst

    def observe(self, inst: Instance, t: np.ndarray):
        b = np.arange(t.shape[0])
        x = self.inputs.apply(inst, inst["order"][b, t])
        return x, inst["labels"][b, t], inst["mask"][b, t]

    def describe(self):
        return {**super().describe(), "split": self.split, "ways": self.ways, "shots": self.shots, "queries": self.queries}

"""Generated tasks that need no data: Random (pure memorisation) and Sum Sign.

Random: each lifetime draws a small fixed set of N(0, 1) "images" with random labels and
streams them in shuffled passes; nothing generalises, so only memorisation helps.
Sum Sign: each example draws a mean from U(-1, 1) and an input from a normal around that
mean truncated to +-2 standard deviations; the label says whether the input sums to >= 0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.special import ndtr, ndtri

from rulegym.envs import counter_rng
from rulegym.envs.protocol import Instance, Task, check_length, check_positive_count


def _shape(x_shape: int | Sequence[int]) -> tuple[int, ...]:
    """A shape option: one positive int, or a sequence of them (not a string, a bool or floats)."""
    bad = ValueError(f"x_shape must be a positive int or a tuple of positive ints, got {x_shape!r}.")
    entries = [x_shape] if isinstance(x_shape, (int, np.integer)) else x_shape
    if isinstance(x_shape, (str, bytes)) or not isinstance(entries, (list, tuple)) or not entries:
        raise bad
    try:
        return tuple(check_positive_count("x_shape", v) for v in entries)
    except ValueError:
        raise bad from None


class RandomTask(Task):
    """``n_images`` N(0, 1) inputs with labels drawn uniformly among ``n_classes``, per lifetime.

    The stream shows them in shuffled passes (every image once per pass). Values beyond
    +-``x_bound`` (10 standard deviations: never in practice) are clipped so the observation
    space is finite.
    """

    x_bound = 10.0

    def __init__(
        self,
        *,
        n_images: int = 20,
        n_classes: int = 10,
        x_shape: int | Sequence[int] = 784,
        lifetime_length: int = 500,
    ):
        if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < 1:
            raise ValueError(f"n_images must be a positive integer, got {n_images!r}.")
        if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}.")
        self.n_images, self.n_classes = int(n_images), int(n_classes)
        self.x_shape = _shape(x_shape)
        self.lifetime_length = check_length(lifetime_length)

    def sample_instance(self, rng: np.random.Generator) -> Instance:
        images = rng.standard_normal((self.n_images, *self.x_shape), dtype=np.float32)
        np.clip(images, -self.x_bound, self.x_bound, out=images)
        labels = rng.integers(self.n_classes, size=self.n_images).astype(np.int64)
        passes = -(-self.lifetime_length // self.n_images)
        order = np.concatenate([rng.permutation(self.n_images) for _ in range(passes)])[: self.lifetime_length]
        return {"images": images, "labels": labels, "order": order.astype(np.int64)}

    def observe(self, inst: Instance, t: np.ndarray):
        b = np.arange(t.shape[0])
        which = inst["order"][b, t]
        return inst["images"][b, which], inst["labels"][b, which], np.ones(t.shape[0], dtype=bool)

    def describe(self):
        return {**super().describe(), "n_images": self.n_images}


class SumSignTask(Task):
    """Binary task: label = 1 if the input sums to >= 0, else 0.

    Each example draws mu ~ U(-1, 1) and every input component from N(mu, 1) truncated to
    [mu - 2, mu + 2]. Noise comes from a counter-based generator keyed per lifetime, so no
    lifetime's inputs are stored and a batch of lifetimes is drawn in one array operation.
    """

    n_classes = 2
    x_bound = 3.0
    TRUNCATION = 2.0

    def __init__(self, *, x_shape: int | Sequence[int] = 784, lifetime_length: int = 500, n_classes: int = 2):
        self.x_shape = _shape(x_shape)
        self.dim = int(np.prod(self.x_shape))
        self.lifetime_length = check_length(lifetime_length)
        # more outputs than the two labels, so agents with a fixed output size (meta-trained on
        # 10-class tasks) can run it; the labels stay 0 and 1
        if not (isinstance(n_classes, (int, np.integer)) and n_classes >= 2):
            raise ValueError(f"SumSign n_classes must be an integer >= 2 (labels are 0 and 1), got {n_classes!r}.")
        self.n_classes = int(n_classes)
        self._lo = ndtr(-self.TRUNCATION)
        self._width = ndtr(self.TRUNCATION) - self._lo

    def sample_instance(self, rng: np.random.Generator) -> Instance:
        return {"key": rng.integers(0, 2**63, dtype=np.int64, size=1).astype(np.uint64)}

    def observe(self, inst: Instance, t: np.ndarray):
        u = counter_rng.uniform(inst["key"][:, 0], t, self.dim + 1)
        mean = 2.0 * u[:, :1] - 1.0
        noise = ndtri(self._lo + self._width * u[:, 1:])  # inverse-CDF truncated normal
        x = (mean + noise).astype(np.float32)
        y = (x.sum(axis=1, dtype=np.float64) >= 0).astype(np.int64)
        return x.reshape(t.shape[0], *self.x_shape), y, np.ones(t.shape[0], dtype=bool)

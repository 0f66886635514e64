"""The character stream: The Wonderful Wizard of Oz, one character per step.

At step t the input is the character just read (one-hot over 27 symbols: a-z and one symbol
for everything else) and the label is the next character. A lifetime is a contiguous window
of the text starting at a random offset. The first 90% of the text is the training split, the
last 10% the test split, so a test lifetime reads text never read in training.
"""

from __future__ import annotations

import functools

import numpy as np

from rulegym.envs import data
from rulegym.envs.protocol import Instance, Task, check_length

SPLITS = ("train", "test", "all")
TRAIN_FRACTION = 0.9


@functools.lru_cache(maxsize=4)
def text_codes(root: str, split: str) -> np.ndarray:
    """Symbol codes (0..26) of one split of the text, shared by every env in the process."""
    codes = data.encode_text(data.load_text(root=root))
    cut = int(len(codes) * TRAIN_FRACTION)
    part = {"train": codes[:cut], "test": codes[cut:], "all": codes}[split]
    part = np.ascontiguousarray(part)
    part.flags.writeable = False
    return part


class CharStreamTask(Task):
    """Predict the next character of a window of ``lifetime_length`` + 1 characters."""

    n_classes = len(data.CHARSET)
    x_bound = 1.0

    def __init__(self, split: str = "train", *, root: str | None = None, lifetime_length: int = 1000):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} for the char stream; valid: {', '.join(SPLITS)}.")
        self.split = split
        self.lifetime_length = check_length(lifetime_length)
        self.codes = text_codes(str(data.resolve_data_root(root)), split)
        if self.lifetime_length + 1 > self.codes.shape[0]:
            raise ValueError(
                f"lifetime_length={lifetime_length} needs {lifetime_length + 1} characters but the {split} split "
                f"has {self.codes.shape[0]}; use a shorter lifetime or split='all'."
            )
        self.x_shape = (self.n_classes,)

    def sample_instance(self, rng: np.random.Generator) -> Instance:
        start = rng.integers(0, self.codes.shape[0] - self.lifetime_length)
        return {"start": np.array([start], dtype=np.int64)}

    def observe(self, inst: Instance, t: np.ndarray):
        pos = inst["start"][:, 0] + t
        x = np.zeros((t.shape[0], self.n_classes), dtype=np.float32)
        x[np.arange(t.shape[0]), self.codes[pos]] = 1.0
        return x, self.codes[pos + 1].astype(np.int64), np.ones(t.shape[0], dtype=bool)

    def describe(self):
        return {**super().describe(), "split": self.split}

"""The online protocol shared by every rulegym environment.

A lifetime is one episode. At step t the env shows x_t together with the label and the
prediction error of step t-1; the agent answers with logits for x_t; only then is y_t
revealed (in the reward, the info, and the next observation). Every accuracy is therefore
online: measured before the agent saw the label.

This module holds the pieces every environment shares -- the task interface, the spaces and
the loss/error arithmetic -- so that the single env and the natively batched vector env
cannot drift apart: both call exactly these functions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from gymnasium import spaces

#: Actions are logits in [-LOGIT_BOUND, LOGIT_BOUND]; learned agents bound their output by
#: LOGIT_BOUND * tanh(z / LOGIT_BOUND), so the action space is finite as gymnasium wants.
LOGIT_BOUND = 100.0

Instance = dict[str, np.ndarray]


class Task(ABC):
    """A distribution over lifetimes of one online task, vectorised over lifetimes.

    A task draws one *instance* per lifetime from that lifetime's generator (stream order,
    label permutation, projection, episode classes, ...) and then answers, for a batch of
    instances stacked along a leading axis and a step index per lifetime, the inputs, labels
    and loss masks of that step with no Python loop over lifetimes. Drawing is per lifetime so
    that lifetime i of a vector env seeded with s equals a single env seeded with s + i.
    """

    #: number of classes (size of the logits, y_prev and err_prev)
    n_classes: int
    #: shape of one input x_t
    x_shape: tuple[int, ...]
    #: every input satisfies |x| <= x_bound (a finite bound for the observation space)
    x_bound: float
    #: steps in one lifetime
    lifetime_length: int

    @abstractmethod
    def sample_instance(self, rng: np.random.Generator) -> Instance:
        """Draw the task instance of one lifetime: a dict of arrays without a batch axis."""

    @abstractmethod
    def observe(self, inst: Instance, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Inputs, labels and loss masks of step ``t[b]`` for every stacked instance ``b``.

        ``inst`` holds the instances stacked on axis 0 (size B); ``t`` is an int array [B] with
        0 <= t < lifetime_length. Returns x float32 [B, *x_shape], y int64 [B], mask bool [B].
        """

    def describe(self) -> dict[str, Any]:
        """Options that define this task, for logs and ``rulegym list``."""
        return {"n_classes": self.n_classes, "x_shape": self.x_shape, "lifetime_length": self.lifetime_length}


def check_flag(name: str, value: object) -> bool:
    """A yes/no option: True, False (or NumPy's), 0 or 1. Anything else -- a string such as
    "no", which ``bool`` would read as True -- is a clear error."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"{name} must be true or false, got {value!r}.")


def check_positive_count(name: str, value: object) -> int:
    """A count option (a size, a number of steps): an integer >= 1, not a bool or a float."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def check_length(lifetime_length: int) -> int:
    """Validate a lifetime length option."""
    return check_positive_count("lifetime_length", lifetime_length)


def observation_space(task: Task) -> spaces.Dict:
    """The observation space of a task: the input, the previous label and previous error."""
    c = task.n_classes
    return spaces.Dict(
        {
            "x": spaces.Box(-task.x_bound, task.x_bound, shape=task.x_shape, dtype=np.float32),
            "y_prev": spaces.Box(0.0, 1.0, shape=(c,), dtype=np.float32),
            "err_prev": spaces.Box(-1.0, 1.0, shape=(c,), dtype=np.float32),
        }
    )


def action_space(task: Task) -> spaces.Box:
    """Logits over the task's classes."""
    return spaces.Box(-LOGIT_BOUND, LOGIT_BOUND, shape=(task.n_classes,), dtype=np.float32)


def check_logits(logits: Any, batch: int, n_classes: int) -> np.ndarray:
    """Validate an action batch and return it as float64 [batch, n_classes].

    A wrong shape or a non-finite logit is a bug in the agent; say so plainly instead of
    letting a NaN reward flow into a learner.
    """
    arr = np.asarray(logits, dtype=np.float64)
    if arr.shape != (batch, n_classes):
        if batch == 1 and arr.shape == (n_classes,):  # a single env's action
            arr = arr[None]
        else:
            raise ValueError(
                f"action has shape {np.shape(logits)}, expected logits of shape "
                f"{(n_classes,) if batch == 1 else (batch, n_classes)} (one logit per class)."
            )
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"action contains a non-finite logit ({arr[tuple(bad)]!r} at index {tuple(int(i) for i in bad)}); "
            "the agent produced NaN/inf -- bound its output, e.g. 100*tanh(z/100)."
        )
    return arr


def score(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cross-entropy, its gradient w.r.t. the logits, and correctness, per row.

    Returns loss float64 [B], err_prev float32 [B, C] (= softmax(logits) - onehot(y), i.e.
    dL/dlogits), correct bool [B]. Computed in float64 so the loss is exact to float32
    precision even for saturated logits.
    """
    b = np.arange(labels.shape[0])
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    log_z = np.log(total)[:, 0]
    loss = log_z - shifted[b, labels]
    err = exp / total
    err[b, labels] -= 1.0
    correct = logits.argmax(axis=1) == labels
    return loss, err.astype(np.float32), correct


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """float32 one-hot rows for integer labels."""
    out = np.zeros((labels.shape[0], n_classes), dtype=np.float32)
    out[np.arange(labels.shape[0]), labels] = 1.0
    return out

"""Task distributions for meta-training: a weighted mixture of (env id, options).

Each meta-batch draws ONE task of the mixture, so the whole batch (or the whole ES population)
is one natively batched vector env of shape-compatible lifetimes. The draw is a pure function
of (seed, iteration): a counter-based seeded generator, so every rank of a distributed run
draws the same task without communicating, and a resumed run draws what the uninterrupted run
would have drawn without any generator state to restore.

Which lifetimes a batch sees is fixed by the env seeds: training lifetimes are seeded
``seed * TRAIN_SEED_STRIDE + position + i``, where ``position`` (the data position) counts the
lifetimes consumed so far and is part of the learner's checkpointed state. Held-out lifetimes
use a disjoint seed range (see :mod:`rulegym.learners.config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from rulegym.learners.config import COMPARE_SEED_BASE, EVAL_SEED_BASE, TRAIN_SEED_STRIDE, TaskSpec

__all__ = ["TaskMixture", "TaskShapeError", "compare_seed_base", "eval_seed_base", "train_seed_base"]

_CHOICE_TAG = 0x7A5C  # separates the task-choice stream from other streams of the same seed


class TaskShapeError(ValueError):
    """The tasks of a mixture disagree on x_dim or n_classes."""


def train_seed_base(seed: int) -> int:
    return int(seed) * TRAIN_SEED_STRIDE


def eval_seed_base(eval_seed: int) -> int:
    return EVAL_SEED_BASE + int(eval_seed) * TRAIN_SEED_STRIDE


def compare_seed_base(seed: int) -> int:
    """Env seed of lifetime 0 of a comparison's ``seed`` (lifetime i gets this + i)."""
    return COMPARE_SEED_BASE + int(seed) * TRAIN_SEED_STRIDE


@dataclass(frozen=True)
class TaskInfo:
    """What the learner needs to know about one task of the mixture."""

    spec: TaskSpec
    x_dim: int
    n_classes: int
    lifetime_steps: int


def _probe(spec: TaskSpec) -> TaskInfo:
    """Build a 1-lifetime env to read the task's dims (cheap: no reset, no data drawn)."""
    import rulegym.envs  # noqa: F401

    try:
        env = gym.make_vec(spec.env_id, num_envs=1, **spec.options)
    except TypeError as err:
        raise TypeError(f"task {spec.env_id!r}: {err}") from err
    try:
        base = env.unwrapped
        task = base.task
        steps = task.lifetime_length
        if getattr(base, "max_episode_steps", None) is not None:
            steps = min(steps, base.max_episode_steps)
        return TaskInfo(spec, int(np.prod(task.x_shape)), int(task.n_classes), int(steps))
    finally:
        env.close()


def check_compatible(infos: Sequence[TaskInfo], what: str = "tasks") -> tuple[int, int]:
    """The common (x_dim, n_classes) of tasks, or a clear error when they differ."""
    dims = {(i.x_dim, i.n_classes) for i in infos}
    if len(dims) > 1:
        lines = "; ".join(f"{i.spec.env_id} {i.spec.options or '{}'}: x_dim={i.x_dim}, n_classes={i.n_classes}" for i in infos)
        raise TaskShapeError(
            f"the {what} must give every lifetime the same input size and number of classes (one agent sees them all), "
            f"but they differ: {lines}. Make them agree with task options, e.g. resize/flatten for image tasks, "
            "x_shape and n_classes for Random/Sum Sign, classes/num_classes for class subsets."
        )
    return next(iter(dims))


class TaskMixture:
    """A weighted mixture of tasks with a common input size and class count.

    ``choose(step)`` draws the task of meta-iteration ``step``; ``env(index, num_envs)`` gives
    a cached native vector env of that task (reset it with explicit seeds for every lifetime).
    """

    def __init__(self, specs: Sequence[TaskSpec], seed: int):
        if not specs:
            raise ValueError("a task mixture needs at least one task.")
        self.specs = list(specs)
        self.seed = int(seed)
        self.infos = [_probe(s) for s in self.specs]
        self.x_dim, self.n_classes = check_compatible(self.infos, "tasks of the mixture")
        weights = np.array([s.weight for s in self.specs], dtype=np.float64)
        self.probs = weights / weights.sum()
        self._envs: dict[tuple[int, int], Any] = {}

    def __len__(self) -> int:
        return len(self.specs)

    def choose(self, step: int) -> int:
        """Index of the task meta-iteration ``step`` uses (the same on every rank and after resume)."""
        if len(self.specs) == 1:
            return 0
        rng = np.random.default_rng([self.seed, int(step), _CHOICE_TAG])
        return int(rng.choice(len(self.specs), p=self.probs))

    def lifetime_steps(self, index: int) -> int:
        return self.infos[index].lifetime_steps

    def env(self, index: int, num_envs: int):
        """The native vector env of task ``index`` with ``num_envs`` lifetimes (cached)."""
        key = (index, int(num_envs))
        if key not in self._envs:
            spec = self.specs[index]
            self._envs[key] = gym.make_vec(spec.env_id, num_envs=int(num_envs), **spec.options)
        return self._envs[key]

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


def lifetime_seeds(base: int, position: int, indices: Sequence[int] | np.ndarray) -> list[int]:
    """Env seeds of the lifetimes ``indices`` of a batch that starts at data ``position``."""
    return [int(base) + int(position) + int(i) for i in indices]

"""The gymnasium environments: one lifetime as a single ``gym.Env``, many as a native ``VectorEnv``.

Both are thin shells around :class:`LifetimeBatch`, which runs B lifetimes of a
:class:`~rulegym.envs.protocol.Task` in lock-step with array operations only. The single env
is a batch of one, so a vector env seeded with ``s`` reproduces single envs seeded with
``s, s+1, ...`` step for step.
"""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from rulegym.envs.protocol import Task, action_space, check_logits, check_positive_count, observation_space, one_hot, score

INFO_KEYS = ("label", "correct", "loss", "loss_mask")


class LifetimeBatch:
    """B lifetimes of one task stepped together; the shared core of both env classes."""

    def __init__(self, task: Task, size: int):
        self.task = task
        self.size = size
        self.inst: dict[str, np.ndarray] | None = None
        self.t = np.zeros(size, dtype=np.int64)
        self.y = np.zeros(size, dtype=np.int64)
        self.mask = np.zeros(size, dtype=bool)

    def reset_rows(self, rows: np.ndarray, rngs: Sequence[np.random.Generator]) -> None:
        """Start new lifetimes in ``rows`` (indices), each drawn from its own generator.

        This is the only loop over lifetimes, and it runs once per lifetime: each lifetime
        must consume its own generator so a batch equals the single envs it stands for.
        """
        fresh = [self.task.sample_instance(rngs[int(i)]) for i in rows]
        if self.inst is None:
            if len(rows) != self.size:
                raise RuntimeError("the first reset must start every lifetime")
            self.inst = {k: np.stack([f[k] for f in fresh]) for k in fresh[0]}
        else:
            for k in self.inst:
                self.inst[k][rows] = np.stack([f[k] for f in fresh])
        self.t[rows] = 0

    def current(self) -> np.ndarray:
        """Inputs of the current step; labels and masks are kept for scoring the prediction."""
        length = self.task.lifetime_length
        live = self.t < length
        x, self.y, self.mask = self.task.observe(self.inst, np.minimum(self.t, length - 1))
        if not live.all():  # after the last step there is no further input
            x[~live] = 0.0
        return x

    def step(self, logits: np.ndarray, active: np.ndarray):
        """Score the prediction of every active lifetime and advance it by one step."""
        loss, err, correct = score(logits, self.y)
        labels, loss_mask = self.y.copy(), self.mask.copy()
        self.t[active] += 1
        y_prev = one_hot(labels, self.task.n_classes)
        return loss, err, correct, labels, loss_mask, y_prev


class OnlineEnv(gym.Env):
    """One lifetime of an online task as a gymnasium env (for ``check_env``, SB3, debugging).

    Observation: ``{"x", "y_prev", "err_prev"}``; action: logits; reward: minus the
    cross-entropy of the logits; info: label, correct, loss, loss_mask of this step. The
    episode terminates after ``task.lifetime_length`` steps.
    """

    metadata = {"render_modes": []}

    def __init__(self, task: Task, render_mode: str | None = None):
        if render_mode is not None:
            raise ValueError(f"rulegym envs do not render (got render_mode={render_mode!r}); use render_mode=None.")
        self.task = task
        self.observation_space = observation_space(task)
        self.action_space = action_space(task)
        self._batch = LifetimeBatch(task, 1)
        self._started = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        rows = np.array([0])
        self._batch.reset_rows(rows, [self.np_random])
        x = self._batch.current()
        c = self.task.n_classes
        self._started = True
        return {"x": x[0], "y_prev": np.zeros(c, np.float32), "err_prev": np.zeros(c, np.float32)}, {}

    def step(self, action):
        if not self._started:
            raise RuntimeError("call reset() before step(): no lifetime has started.")
        if self._batch.t[0] >= self.task.lifetime_length:
            raise RuntimeError("this lifetime is over (terminated=True was returned); call reset() to start a new one.")
        logits = check_logits(action, 1, self.task.n_classes)
        loss, err, correct, labels, mask, y_prev = self._batch.step(logits, np.ones(1, dtype=bool))
        terminated = bool(self._batch.t[0] >= self.task.lifetime_length)
        x = self._batch.current()
        obs = {"x": x[0], "y_prev": y_prev[0], "err_prev": err[0]}
        info = {"label": int(labels[0]), "correct": bool(correct[0]), "loss": float(loss[0]), "loss_mask": bool(mask[0])}
        return obs, -float(loss[0]), terminated, False, info


class OnlineVectorEnv(VectorEnv):
    """``num_envs`` independent lifetimes of one task, stepped with array operations only.

    Autoreset follows gymnasium's NEXT_STEP mode: the step after a lifetime ends starts a new
    one (its action is ignored, reward 0). ``max_episode_steps`` (passed by ``gym.make_vec``
    when a spec sets it) truncates lifetimes early, like ``TimeLimit`` on the single env.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, task: Task, num_envs: int, max_episode_steps: int | None = None, render_mode: str | None = None):
        if render_mode is not None:
            raise ValueError(f"rulegym envs do not render (got render_mode={render_mode!r}); use render_mode=None.")
        num_envs = check_positive_count("num_envs", num_envs)
        if max_episode_steps is not None:
            max_episode_steps = check_positive_count("max_episode_steps", max_episode_steps)
        self.task = task
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.single_observation_space = observation_space(task)
        self.single_action_space = action_space(task)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._batch = LifetimeBatch(task, self.num_envs)
        self._rngs: list[np.random.Generator] | None = None
        self._needs_reset = np.zeros(self.num_envs, dtype=bool)
        zeros = np.zeros((self.num_envs, task.n_classes), np.float32)
        self._last_feedback = (zeros, zeros.copy())  # y_prev, err_prev last returned

    def _seed(self, seed: int | Sequence[int | None] | None, mask: np.ndarray) -> None:
        """New generators for the rows where ``mask`` is True (an int seed s gives row i s + i);
        the other rows keep theirs."""
        if isinstance(seed, (int, np.integer)):
            seed = [int(seed) + i for i in range(self.num_envs)]
        if seed is None:
            if self._rngs is None:
                self._rngs = [seeding.np_random(None)[0] for _ in range(self.num_envs)]
            return
        if len(seed) != self.num_envs:
            raise ValueError(f"got {len(seed)} seeds for {self.num_envs} envs; pass one int or one seed per env.")
        old = self._rngs
        self._rngs = [
            seeding.np_random(s)[0] if s is not None and reset else (old[i] if old is not None else seeding.np_random(None)[0])
            for i, (s, reset) in enumerate(zip(seed, mask))
        ]

    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None):
        """Start lifetimes: all of them, or with ``options={"reset_mask": m}`` (after the first
        reset) only the rows where ``m`` is True -- as ``SyncVectorEnv`` does, the other rows
        keep their lifetime, their generator (a seed applies to reset rows only) and the
        observation they last returned."""
        mask = np.ones(self.num_envs, dtype=bool)
        if options is not None and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"])
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
                raise ValueError(f"options['reset_mask'] must be a bool array of shape ({self.num_envs},).")
            if not mask.any():
                raise ValueError("options['reset_mask'] has no True entry: it must name at least one lifetime to reset.")
            if self._batch.inst is None:  # nothing has started yet: every lifetime starts
                mask = np.ones(self.num_envs, dtype=bool)
        self._seed(seed, mask)
        rows = np.flatnonzero(mask)
        self._batch.reset_rows(rows, self._rngs)
        self._needs_reset[rows] = False
        x = self._batch.current()
        y_prev, err_prev = self._last_feedback  # this env's own copies
        y_prev[rows] = 0.0
        err_prev[rows] = 0.0
        return {"x": x, "y_prev": y_prev.copy(), "err_prev": err_prev.copy()}, {}

    def step(self, actions):
        if self._rngs is None or self._batch.inst is None:
            raise RuntimeError("call reset() before step(): no lifetime has started.")
        logits = check_logits(actions, self.num_envs, self.task.n_classes)
        restart = self._needs_reset.copy()
        active = ~restart
        loss, err, correct, labels, mask, y_prev = self._batch.step(logits, active)
        t = self._batch.t
        terminated = active & (t >= self.task.lifetime_length)
        # like TimeLimit on the single env: truncated at the limit, whether or not also terminated
        if self.max_episode_steps is not None:
            truncated = active & (t >= self.max_episode_steps)
        else:
            truncated = np.zeros(self.num_envs, dtype=bool)
        if restart.any():
            rows = np.flatnonzero(restart)
            self._batch.reset_rows(rows, self._rngs)
            y_prev[rows] = 0.0
            err[rows] = 0.0
        self._needs_reset = terminated | truncated
        x = self._batch.current()
        reward = np.where(active, -loss, 0.0)
        info: dict[str, Any] = {}
        if active.any():  # like SyncVectorEnv: a restarting lifetime has no step info
            for key, value in zip(INFO_KEYS, (labels, correct, loss, mask)):
                info[key] = np.where(active, value, np.zeros((), value.dtype))
                info["_" + key] = active.copy()
        self._last_feedback = (y_prev.copy(), err.copy())
        return {"x": x, "y_prev": y_prev, "err_prev": err}, reward, terminated, truncated, info

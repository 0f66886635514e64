"""The loop that plugs any agent into any rulegym vector env for one lifetime.

Every agent (learned rule, online SGD/Adam, a wrapped SB3 policy) is evaluated and
meta-trained through this one loop, so their numbers are comparable by construction. The loop
runs ``B`` lifetimes of a natively batched :class:`~rulegym.envs.OnlineVectorEnv` in lock-step:
the only Python loop is over time steps, never over lifetimes.

At the edge the env's numpy observation becomes torch with zero copies (``torch.from_numpy``;
one host-to-device copy when the agent lives on a GPU), the agent steps, its logits go back to
the env as numpy, and the per-step loss is recomputed in torch from the logits and the revealed
label, so it is differentiable: a learner backpropagates ``result.mean_loss()`` through the
whole lifetime (BPTT) when the loop ran with ``grad=True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rulegym.agents.base import Agent, State

__all__ = ["LifetimeResult", "env_dims", "evaluate", "rollout", "run_lifetime", "unwrap_vector_env"]


@dataclass
class LifetimeResult:
    """What one lifetime (or one chunk of it) produced, for ``B`` lifetimes and ``T`` steps.

    ``loss`` lives on the agent's device and keeps the autograd graph when the loop ran with
    ``grad=True``; the other per-step records are CPU tensors viewing the env's numpy arrays.
    Metrics count only the steps where ``loss_mask`` is true (Omniglot counts only queries).
    """

    #: cross-entropy of every prediction, float [T, B] (differentiable when grad=True)
    loss: Tensor
    #: whether argmax(logits) was the label (as scored by the env), bool [T, B]
    correct: Tensor
    #: whether a step counts for the objective and the metrics, bool [T, B]
    loss_mask: Tensor
    #: the label revealed after each prediction, int64 [T, B]
    labels: Tensor
    #: the agent state after the last step (to continue a lifetime, e.g. truncated BPTT)
    state: State = field(repr=False)
    #: the env observation after the last step, numpy (the input of the next step)
    obs: dict[str, np.ndarray] = field(repr=False)
    #: the logits of every step, [T, B, C], only when the loop ran with keep_logits=True
    logits: Tensor | None = field(default=None, repr=False)

    @property
    def steps(self) -> int:
        return int(self.loss.shape[0])

    @property
    def num_lifetimes(self) -> int:
        return int(self.loss.shape[1])

    def accuracy_curve(self) -> np.ndarray:
        """Online accuracy per step, averaged over the lifetimes where the step counts: float64 [T].

        NaN at steps that count in no lifetime (e.g. the support steps of an Omniglot episode).
        """
        mask = self.loss_mask.numpy()
        hits = (self.correct.numpy() & mask).sum(axis=1)
        counts = mask.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)

    def loss_curve(self) -> np.ndarray:
        """Masked mean loss per step over lifetimes, float64 [T] (NaN where no step counts)."""
        mask = self.loss_mask.numpy()
        loss = self.loss.detach().double().cpu().numpy()
        counts = mask.sum(axis=1)
        return np.where(counts > 0, (loss * mask).sum(axis=1) / np.maximum(counts, 1), np.nan)

    def accuracy(self) -> float:
        """Online accuracy over every counted step of every lifetime."""
        n = int(self.loss_mask.sum())
        return float((self.correct & self.loss_mask).sum()) / n if n else math.nan

    def mean_loss(self) -> Tensor:
        """Masked mean loss over steps and lifetimes: a scalar that keeps the graph (grad=True)."""
        mask = self.loss_mask.to(device=self.loss.device, dtype=self.loss.dtype)
        return (self.loss * mask).sum() / mask.sum().clamp_min(1.0)


def unwrap_vector_env(env: Any):
    """The native rulegym vector env behind ``env`` (``gym.make_vec`` may wrap it)."""
    from rulegym.envs.online_env import OnlineVectorEnv

    base = getattr(env, "unwrapped", env)
    if not isinstance(base, OnlineVectorEnv):
        hint = (
            "pass gym.make_vec(env_id, num_envs=B) (the native rulegym vector env)"
            if isinstance(env, gym.Env)
            else "pass gym.make_vec(env_id, num_envs=B) for a rulegym env id"
        )
        raise TypeError(f"run_lifetime needs a rulegym OnlineVectorEnv, got {type(env).__name__}; {hint}.")
    if base is not env:
        raise TypeError(
            f"run_lifetime steps the native vector env directly, but it got {type(env).__name__} wrapping it; "
            "wrappers would be bypassed -- pass the unwrapped env (gym.make_vec without wrappers)."
        )
    return base


def env_dims(env: Any) -> tuple[int, int]:
    """(x_dim, n_classes) of a rulegym env: what an agent for it must be built with."""
    task = getattr(getattr(env, "unwrapped", env), "task", None)
    if task is None:
        raise TypeError(f"{type(env).__name__} is not a rulegym env (it has no .task).")
    return int(np.prod(task.x_shape)), int(task.n_classes)


def _check_agent_fits(agent: Agent, env) -> None:
    x_dim, n_classes = env_dims(env)
    if (agent.x_dim, agent.n_classes) != (x_dim, n_classes):
        raise ValueError(
            f"{type(agent).__name__} was built for x_dim={agent.x_dim}, n_classes={agent.n_classes} but the env "
            f"gives x_dim={x_dim}, n_classes={n_classes}; build the agent with rulegym.train.loop.env_dims(env)."
        )


def _lifetime_steps(venv, steps: int | None) -> int:
    limit = venv.task.lifetime_length
    if venv.max_episode_steps is not None:
        limit = min(limit, venv.max_episode_steps)
    if steps is None:
        return limit
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer or None (one whole lifetime), got {steps!r}.")
    if steps > limit:
        raise ValueError(
            f"steps={steps} exceeds the lifetime length ({limit}); one call runs at most one lifetime -- "
            "make the env with a longer lifetime_length option or ask for fewer steps."
        )
    return int(steps)


def _to_torch(obs: Mapping[str, np.ndarray], device: torch.device) -> dict[str, Tensor]:
    """numpy observation -> torch, zero-copy on CPU (one transfer per array on an accelerator)."""
    out = {k: torch.from_numpy(v) for k, v in obs.items()}
    if device.type != "cpu":
        out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
    return out


def rollout(
    agent: Agent,
    env: Any,
    obs: Mapping[str, np.ndarray],
    state: State,
    steps: int,
    *,
    grad: bool = False,
    device: torch.device | str | None = None,
    keep_logits: bool = False,
) -> LifetimeResult:
    """Continue running lifetimes for ``steps`` steps from env observation ``obs`` and agent ``state``.

    The building block of :func:`run_lifetime`, exposed for truncated BPTT: run a chunk, backprop
    its loss, detach ``result.state`` and continue from ``result.obs``. The caller must not ask
    for more steps than remain in the lifetime (the env would start new lifetimes).
    """
    venv = unwrap_vector_env(env)
    device = torch.device(device) if device is not None else agent.device
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    losses: list[Tensor] = []
    logits_kept: list[Tensor] = []
    correct, masks, labels = [], [], []
    with torch.set_grad_enabled(grad):
        for t in range(int(steps)):
            logits, state = agent.step(_to_torch(obs, device), state)
            action = logits.detach().cpu().numpy()
            obs, _reward, terminated, truncated, info = venv.step(action)
            if "label" not in info:
                raise RuntimeError("the env started new lifetimes mid-rollout; ask for at most the remaining steps.")
            if t < steps - 1 and (terminated.any() or truncated.any()):
                raise RuntimeError(
                    f"a lifetime ended after {t + 1} of the {steps} steps asked for; ask for at most the remaining steps."
                )
            y = torch.from_numpy(info["label"])
            losses.append(F.cross_entropy(logits, y.to(logits.device, non_blocking=True), reduction="none"))
            if keep_logits:
                logits_kept.append(logits if grad else logits.detach())
            correct.append(info["correct"])
            masks.append(info["loss_mask"])
            labels.append(info["label"])
        loss = torch.stack(losses)
    return LifetimeResult(
        loss=loss,
        correct=torch.from_numpy(np.stack(correct)),
        loss_mask=torch.from_numpy(np.stack(masks)),
        labels=torch.from_numpy(np.stack(labels)),
        state=state,
        obs=obs,
        logits=torch.stack(logits_kept) if keep_logits else None,
    )


def run_lifetime(
    agent: Agent,
    env: Any,
    steps: int | None = None,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    grad: bool = False,
    device: torch.device | str | None = None,
    keep_logits: bool = False,
) -> LifetimeResult:
    """Run ``env.num_envs`` fresh lifetimes of ``agent`` on a rulegym vector env, in one batch.

    ``steps`` defaults to the whole lifetime (``env.task.lifetime_length``) and may be shorter,
    never longer. ``seed`` seeds the env (lifetime ``i`` gets ``seed + i``, as gymnasium does) and,
    unless a ``generator`` is given, the agent's initial state; with neither, both are drawn
    from fresh entropy / the global torch RNG. ``grad=True`` records the autograd graph so
    ``result.mean_loss().backward()`` reaches the meta-parameters; ``grad=False`` runs under
    ``torch.no_grad()``. ``device`` defaults to the agent's; observations are moved there.
    """
    venv = unwrap_vector_env(env)
    _check_agent_fits(agent, venv)
    steps = _lifetime_steps(venv, steps)
    device = torch.device(device) if device is not None else agent.device
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    obs, _ = venv.reset(seed=seed)
    with torch.set_grad_enabled(grad):
        state = agent.initial_state(venv.num_envs, generator)
        state = {k: v.to(device) for k, v in state.items()}
    return rollout(agent, venv, obs, state, steps, grad=grad, device=device, keep_logits=keep_logits)


def evaluate(
    agent: Agent,
    env_id: str,
    *,
    num_envs: int,
    seed: int | None,
    steps: int | None = None,
    env_options: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    keep_logits: bool = False,
) -> LifetimeResult:
    """Evaluate ``agent`` on ``num_envs`` fresh lifetimes of ``env_id`` (no gradients).

    Builds the native vector env with ``gym.make_vec(env_id, num_envs=..., **env_options)``,
    runs one lifetime and closes the env.
    """
    import rulegym.envs  # noqa: F401  (registers the env ids)

    env = gym.make_vec(env_id, num_envs=num_envs, **dict(env_options or {}))
    try:
        with torch.no_grad():
            return run_lifetime(agent, env, steps, seed=seed, grad=False, device=device, keep_logits=keep_logits)
    finally:
        env.close()

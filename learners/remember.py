"""Learning to remember (Gregor 2020): meta-train an online learner to store the past in its weights.

The agent runs on one long online stream per lifetime (B lifetimes in lock-step). Every ``T``
steps (one *block*):

1. the online state runs the current block of T steps, keeping the autograd graph from the
   block's first state (which is detached: truncation between blocks);
2. a past start tau is drawn uniformly in [t - P, t - T] (t = the time after the block, P the
   *delay*; clipped at the start of the lifetime), per lifetime;
3. a *branch* starts from the current weights with the activations reset to zero
   (:func:`~rulegym.agents.base.reset_activations`) and re-reads the past snippet
   [tau, tau + T) from a replay buffer of the last P observations;
4. the prediction losses of the current block and of the snippet (2T steps) are averaged and
   back-propagated into the meta-parameters (Adam, gradient-norm clipping).

The online state goes on from the end of the current block, untouched by the branch. An agent
can only predict the snippet well from a reset state if it wrote what it read into its weights
(or learns fast from the snippet itself): for agents whose state holds only activations (the
LSTM baselines) the branch starts from zeros and the snippet is predicted from scratch.

Replaying the snippet. The branch plays the online protocol on the stored inputs and labels:
at snippet step k the observation is (x_{tau+k}, onehot(y_{tau+k-1}), softmax(branch logits_{k-1})
- onehot(y_{tau+k-1})), i.e. the error of the branch's *own* previous prediction, detached like
an env's; the first step has zero y_prev/err_prev, as the first step of a lifetime. With
P = T the only start is t - T: the branch re-reads the block just read.

Losses are reported in bits per character (nats / ln 2): ``early`` is the mean over the first
``early_fraction`` of the blocks, ``final`` over the last ``final_fraction``; ``loss`` is the
objective (mean of both halves), ``online_*`` the current-block half, ``remember_*`` the
snippet half.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rulegym.agents.base import Agent, State, reset_activations

__all__ = ["RememberConfig", "RememberResult", "ReplayBuffer", "branch_loss", "lifetime_seed", "past_starts", "summarize", "train_remember"]

LN2 = math.log(2.0)


@dataclass
class RememberConfig:
    """Options of :func:`train_remember` (all steps are env steps of every lifetime)."""

    #: block length: a meta-update every T steps; the snippet is T steps too
    T: int = 10
    #: delay P: the snippet starts uniformly in [t - P, t - T] (P >= T)
    delay: int = 80
    #: online steps per lifetime in total (a multiple of T)
    steps: int = 2000
    #: lifetimes in the batch (independent streams in lock-step)
    num_envs: int = 8
    #: steps before the agent is restarted on a fresh lifetime (None: one lifetime of `steps`)
    lifetime_length: int | None = None
    lr: float = 1e-3
    #: gradient-norm clipping of the meta-gradient (None: no clipping)
    clip: float | None = 1.0
    seed: int = 0
    #: fraction of blocks averaged for the early and the final loss
    early_fraction: float = 0.1
    final_fraction: float = 0.1

    def check(self) -> None:
        for name in ("T", "delay", "steps", "num_envs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}.")
        if self.delay < self.T:
            raise ValueError(
                f"delay={self.delay} is shorter than the block T={self.T}; the past snippet of T steps must start "
                f"at least T steps back (use delay >= T; delay == T re-reads the block just read)."
            )
        if self.steps % self.T:
            raise ValueError(f"steps={self.steps} must be a multiple of T={self.T}.")
        life = self.lifetime_length if self.lifetime_length is not None else self.steps
        if isinstance(life, bool) or not isinstance(life, (int, np.integer)) or life < self.T or life % self.T:
            raise ValueError(f"lifetime_length must be a positive multiple of T={self.T} (or None), got {self.lifetime_length!r}.")
        if not (self.lr > 0):
            raise ValueError(f"lr must be positive, got {self.lr!r}.")
        if self.clip is not None and not (self.clip > 0):
            raise ValueError(f"clip must be positive or None, got {self.clip!r}.")
        for name in ("early_fraction", "final_fraction"):
            v = getattr(self, name)
            if not (0 < v <= 1):
                raise ValueError(f"{name} must be in (0, 1], got {v!r}.")


@dataclass
class RememberResult:
    """Curves (per block, nats per step averaged over lifetimes) and summary numbers in bits/char."""

    config: dict[str, Any]
    online_curve: np.ndarray
    remember_curve: np.ndarray
    params: int
    seconds: float
    summary: dict[str, float] = field(default_factory=dict)
    #: the meta-parameters after training (detached copies; the agent is also trained in place)
    meta_parameters: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @property
    def loss_curve(self) -> np.ndarray:
        """The objective per block: mean of the online and the remember halves (nats)."""
        return 0.5 * (self.online_curve + self.remember_curve)


class ReplayBuffer:
    """The last ``capacity`` steps of B streams (inputs, labels, loss masks), as numpy rings."""

    def __init__(self, capacity: int, num_envs: int, x_dim: int):
        self.capacity = int(capacity)
        self.x = np.zeros((capacity, num_envs, x_dim), dtype=np.float32)
        self.y = np.zeros((capacity, num_envs), dtype=np.int64)
        self.mask = np.zeros((capacity, num_envs), dtype=bool)
        self.t = 0  # steps stored since the last clear (absolute time of the next step)

    def clear(self) -> None:
        self.t = 0

    def push(self, x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> None:
        i = self.t % self.capacity
        self.x[i] = x.reshape(x.shape[0], -1)
        self.y[i] = y
        self.mask[i] = mask
        self.t += 1

    def snippet(self, start: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Steps [start_b, start_b + length) of every stream b: x [L, B, D], y [L, B], mask [L, B]."""
        if (start < self.t - self.capacity).any() or (start + length > self.t).any() or (start < 0).any():
            raise IndexError(f"snippet [{start.min()}, {start.max() + length}) is not in the buffer (holds [{max(0, self.t - self.capacity)}, {self.t})).")
        idx = (start[None, :] + np.arange(length)[:, None]) % self.capacity  # [L, B]
        cols = np.arange(start.shape[0])[None, :]
        return self.x[idx, cols], self.y[idx, cols], self.mask[idx, cols]


def past_starts(t: int, T: int, delay: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Snippet starts, one per lifetime, uniform on the integers of [max(0, t - delay), t - T].

    ``t`` is the number of steps read so far (the snippet [tau, tau + T) ends by t); with
    ``delay == T`` the only start is t - T, the block just read.
    """
    if t < T:
        raise ValueError(f"only {t} steps were read; a snippet of T={T} needs at least T.")
    lo, hi = max(0, t - delay), t - T
    return rng.integers(lo, hi + 1, size=size)


def lifetime_seed(seed: int, episode: int, num_envs: int) -> int:
    """Env seed of the ``episode``-th batch of lifetimes of a run seeded ``seed`` (lifetime i of
    the batch gets this + i), so runs with different seeds never share a stream."""
    return int(seed) * 100_003 + int(episode) * int(num_envs)


def _masked_mean(loss: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(loss.dtype)
    return (loss * m).sum() / m.sum().clamp_min(1.0)


def branch_loss(agent: Agent, state: State, x: np.ndarray, y: np.ndarray, mask: np.ndarray, generator: torch.Generator | None = None) -> Tensor:
    """Mean prediction loss (nats) of a branch that re-reads a stored snippet from ``state``'s
    weights with fresh activations. ``state`` is not modified (the online state goes on)."""
    device = agent.device
    branch = reset_activations(agent, state, generator)
    steps, batch = y.shape
    c = agent.n_classes
    xs = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    ys = torch.from_numpy(np.ascontiguousarray(y)).to(device)
    y_prev = xs.new_zeros(batch, c)
    err_prev = xs.new_zeros(batch, c)
    losses = []
    for k in range(steps):
        logits, branch = agent.step({"x": xs[k], "y_prev": y_prev, "err_prev": err_prev}, branch)
        losses.append(F.cross_entropy(logits, ys[k], reduction="none"))
        y_prev = F.one_hot(ys[k], c).to(xs.dtype)
        err_prev = (logits.detach().softmax(-1) - y_prev)
    return _masked_mean(torch.stack(losses), torch.from_numpy(np.ascontiguousarray(mask)).to(device))


def _make_env(env: Any, num_envs: int, env_options: Mapping[str, Any], life: int):
    from rulegym.envs.online_env import OnlineVectorEnv

    if isinstance(env, OnlineVectorEnv):
        if env.num_envs != num_envs:
            raise ValueError(f"the env holds {env.num_envs} lifetimes but num_envs={num_envs}; make them agree.")
        return env, False
    if not isinstance(env, str):
        raise TypeError(f"env must be a rulegym env id or an OnlineVectorEnv, got {type(env).__name__}.")
    import rulegym.envs  # noqa: F401  (registers the ids)

    return gym.make_vec(env, num_envs=num_envs, **{"lifetime_length": life, **dict(env_options)}), True


def train_remember(
    agent: Agent,
    env: Any = "rulegym/WizardOfOz-v0",
    config: RememberConfig | None = None,
    *,
    env_options: Mapping[str, Any] | None = None,
    callback: Callable[[int, float, float], None] | None = None,
    log_dir: str | None = None,
    **overrides: Any,
) -> RememberResult:
    """Meta-train ``agent`` in place by learning to remember on an online stream.

    ``env`` is a rulegym env id (built here as a vector env with ``num_envs`` lifetimes of the
    needed length plus ``env_options``) or a native vector env. ``overrides`` set fields of
    ``config``. ``callback(block, online_nats, remember_nats)`` is called after every block;
    with ``log_dir`` the per-block losses (bits/char) also go to TensorBoard there.
    Returns the curves, the early/final losses in bits per character and the meta-parameters.
    """
    cfg = RememberConfig(**{**asdict(config or RememberConfig()), **overrides})
    cfg.check()
    if not getattr(agent, "differentiable", True):
        raise TypeError(f"{type(agent).__name__} is not differentiable; learning to remember needs gradients.")
    life = cfg.lifetime_length or cfg.steps
    venv, owned = _make_env(env, cfg.num_envs, dict(env_options or {}), life)
    from rulegym.train.loop import env_dims, unwrap_vector_env

    venv = unwrap_vector_env(venv)
    if venv.task.lifetime_length < life:
        if owned:
            venv.close()
        raise ValueError(
            f"the env's lifetime_length ({venv.task.lifetime_length}) is shorter than the {life} steps a lifetime needs "
            "here; lengthen it or set lifetime_length (a multiple of T) in the config."
        )
    if env_dims(venv) != (agent.x_dim, agent.n_classes):
        x_dim, n_classes = env_dims(venv)
        if owned:
            venv.close()
        raise ValueError(
            f"{type(agent).__name__} was built for x_dim={agent.x_dim}, n_classes={agent.n_classes} but the env gives "
            f"x_dim={x_dim}, n_classes={n_classes}; build the agent with rulegym.train.loop.env_dims(env)."
        )
    device = agent.device
    gen = torch.Generator().manual_seed(cfg.seed)  # initial states and branch resets
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.Adam([p for p in agent.parameters() if p.requires_grad], lr=cfg.lr)
    buffer = ReplayBuffer(cfg.delay, cfg.num_envs, agent.x_dim)
    n_blocks = cfg.steps // cfg.T
    online_curve = np.zeros(n_blocks)
    remember_curve = np.zeros(n_blocks)
    t0 = time.perf_counter()
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir)
    obs: dict[str, np.ndarray] | None = None
    state: State | None = None
    episode = 0
    try:
        for block in range(n_blocks):
            if (block * cfg.T) % life == 0:  # a new lifetime: fresh streams, fresh agent state
                obs, _ = venv.reset(seed=lifetime_seed(cfg.seed, episode, cfg.num_envs))
                state = {k: v.to(device) for k, v in agent.initial_state(cfg.num_envs, gen).items()}
                buffer.clear()
                episode += 1
            state = {k: v.detach() for k, v in state.items()}  # truncation between blocks
            losses, masks = [], []
            for _ in range(cfg.T):
                o = {k: torch.from_numpy(v).to(device) for k, v in obs.items()}
                logits, state = agent.step(o, state)
                x_now = obs["x"]
                obs, _r, _term, _trunc, info = venv.step(logits.detach().cpu().numpy())
                label = info["label"]
                buffer.push(x_now, label, info["loss_mask"])
                losses.append(F.cross_entropy(logits, torch.from_numpy(label).to(device), reduction="none"))
                masks.append(info["loss_mask"])
            online = _masked_mean(torch.stack(losses), torch.from_numpy(np.stack(masks)).to(device))
            start = past_starts(buffer.t, cfg.T, cfg.delay, cfg.num_envs, rng)
            sx, sy, sm = buffer.snippet(start, cfg.T)
            remember = branch_loss(agent, state, sx, sy, sm, gen)
            loss = 0.5 * (online + remember)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip is not None:
                torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.clip)
            opt.step()
            online_curve[block] = float(online.detach())
            remember_curve[block] = float(remember.detach())
            if not (math.isfinite(online_curve[block]) and math.isfinite(remember_curve[block])):
                raise FloatingPointError(
                    f"the loss became non-finite at block {block}; lower lr (now {cfg.lr}) or tighten clip (now {cfg.clip})."
                )
            if callback is not None:
                callback(block, online_curve[block], remember_curve[block])
            if writer is not None:
                step = (block + 1) * cfg.T
                writer.add_scalar("remember/online_bits", online_curve[block] / LN2, step)
                writer.add_scalar("remember/snippet_bits", remember_curve[block] / LN2, step)
                writer.add_scalar("remember/loss_bits", 0.5 * (online_curve[block] + remember_curve[block]) / LN2, step)
    finally:
        if owned:
            venv.close()
        if writer is not None:
            writer.close()
    res = RememberResult(
        config=asdict(cfg),
        online_curve=online_curve,
        remember_curve=remember_curve,
        params=sum(p.numel() for p in agent.parameters()),
        seconds=time.perf_counter() - t0,
        meta_parameters={k: v.detach().clone() for k, v in agent.state_dict().items()},
    )
    res.summary = summarize(res, cfg.early_fraction, cfg.final_fraction)
    return res


def summarize(res: RememberResult, early_fraction: float = 0.1, final_fraction: float = 0.1) -> dict[str, float]:
    """Early and final losses in bits per character for the objective and both halves."""
    n = len(res.online_curve)
    k_early = max(1, int(round(n * early_fraction)))
    k_final = max(1, int(round(n * final_fraction)))
    out: dict[str, float] = {}
    for name, curve in (("loss", res.loss_curve), ("online", res.online_curve), ("remember", res.remember_curve)):
        out[f"early_{name}_bits"] = float(curve[:k_early].mean() / LN2)
        out[f"final_{name}_bits"] = float(curve[-k_final:].mean() / LN2)
    return out

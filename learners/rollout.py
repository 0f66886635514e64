"""Running lifetimes for meta-training: guarded, checkpointed and population rollouts.

Plain BPTT windows go through :func:`rulegym.train.loop.rollout` (the loop every agent is
evaluated with) with the agent wrapped in :class:`FiniteGuard`: the env rejects non-finite
logits with a ValueError by design, so the guard raises :class:`NonFiniteOutput` first, which
the learner turns into a skipped, counted update instead of a crash.

Two cases need their own stepping and live here:

* :func:`checkpointed_window` -- activation checkpointing over segments of a window. Stepping
  the env is a side effect that must not run twice, so a segment records its observations on
  the first (forward) run and replays them when ``torch.utils.checkpoint`` recomputes it during
  backward. The env cuts the graph between a prediction and the next observation (obs arrive as
  numpy), so replaying recorded observations computes exactly the forward graph.
* :func:`population_rollout` -- an ES population in one vmapped batch. Task inputs and labels
  never depend on the agent's actions (``Task.observe(inst, t)``), so one env row per data
  stream supplies ``x``, labels and masks for every member that shares the stream, and each
  member's feedback (``y_prev``, ``err_prev``), loss and correctness come from the env's own
  :func:`rulegym.envs.protocol.score` on that member's logits -- the numbers a separate env row
  would give, at a fraction of the env cost.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rulegym.agents.base import Agent, State, population_step
from rulegym.envs.protocol import one_hot, score
from rulegym.train.loop import unwrap_vector_env

__all__ = ["FiniteGuard", "NonFiniteOutput", "WindowStats", "checkpointed_window", "population_rollout"]


class NonFiniteOutput(FloatingPointError):
    """The agent produced NaN/inf logits; the iteration's update must be skipped."""


class FiniteGuard(Agent):
    """Wraps an agent so non-finite logits raise :class:`NonFiniteOutput` before the env sees them."""

    def __init__(self, agent: Agent):
        super().__init__(agent.x_dim, agent.n_classes)
        self.inner = agent
        self.state_kinds = agent.state_kinds

    def initial_state(self, batch_size: int, generator: torch.Generator | None = None) -> State:
        return self.inner.initial_state(batch_size, generator)

    def step(self, obs, state):
        logits, state = self.inner.step(obs, state)
        if not bool(torch.isfinite(logits.detach()).all()):
            raise NonFiniteOutput("the agent produced non-finite logits")
        return logits, state

    def _step(self, obs, state):
        return self.inner._step(obs, state)


class WindowStats:
    """Masked sums over a window (plain floats, no graph)."""

    def __init__(self) -> None:
        self.loss_sum = 0.0
        self.correct = 0.0
        self.count = 0.0

    def add(self, loss: Tensor, correct: Tensor, mask: Tensor) -> None:
        m = mask.to(torch.bool).cpu()
        self.loss_sum += float((loss.detach().double().cpu() * m).sum())
        self.correct += float((correct.cpu() & m).sum())
        self.count += float(m.sum())


def _to_torch(obs: Mapping[str, np.ndarray], device: torch.device) -> dict[str, Tensor]:
    # copies: the recorded observations must outlive the env's next step
    return {k: torch.as_tensor(np.array(v, copy=True)).to(device) for k, v in obs.items()}


class _Segment:
    """One checkpointed segment: live run (steps the env, records) then replays on recompute."""

    def __init__(self, agent: Agent, venv, obs: Mapping[str, np.ndarray], keys: list[str], steps: int, device: torch.device):
        self.agent, self.venv, self.obs0, self.keys, self.steps, self.device = agent, venv, obs, keys, steps, device
        self.records: list[tuple[dict[str, Tensor], Tensor, Tensor]] | None = None
        self.final_obs: Mapping[str, np.ndarray] | None = None
        self.stats = WindowStats()

    def __call__(self, *state_tensors: Tensor):
        state = dict(zip(self.keys, state_tensors))
        total = None
        if self.records is None:  # the forward run: step the env and record what it showed
            records = []
            obs = self.obs0
            for _ in range(self.steps):
                o = _to_torch(obs, self.device)
                logits, state = self.agent.step(o, state)
                obs, _r, _term, _trunc, info = self.venv.step(logits.detach().cpu().numpy())
                if "label" not in info:
                    raise RuntimeError("the env started new lifetimes mid-window; ask for at most the remaining steps.")
                y = torch.from_numpy(np.array(info["label"]))
                mask = torch.from_numpy(np.array(info["loss_mask"]))
                loss = F.cross_entropy(logits, y.to(logits.device), reduction="none")
                self.stats.add(loss, torch.from_numpy(np.array(info["correct"])), mask)
                masked = (loss * mask.to(loss.device, loss.dtype)).sum()
                total = masked if total is None else total + masked
                records.append((o, y, mask))
            self.records = records
            self.final_obs = obs
        else:  # recomputation during backward: replay the recorded observations
            for o, y, mask in self.records:
                logits, state = self.agent.step(o, state)
                loss = F.cross_entropy(logits, y.to(logits.device), reduction="none")
                masked = (loss * mask.to(loss.device, loss.dtype)).sum()
                total = masked if total is None else total + masked
        return (total, *[state[k] for k in self.keys])


def checkpointed_window(
    agent: Agent,
    env: Any,
    obs: Mapping[str, np.ndarray],
    state: State,
    steps: int,
    segment: int,
    device: torch.device,
) -> tuple[Tensor, State, Mapping[str, np.ndarray], WindowStats]:
    """Run ``steps`` steps with activation checkpointing every ``segment`` steps.

    Returns the masked loss SUM of the window (differentiable), the final state, the env's
    next observation and the window's masked statistics. Memory during backward holds the
    states at segment boundaries, the recorded observations and one segment's activations.
    """
    from torch.utils.checkpoint import checkpoint

    venv = unwrap_vector_env(env)
    keys = list(state)
    total: Tensor | None = None
    stats = WindowStats()
    done = 0
    while done < steps:
        n = min(segment, steps - done)
        seg = _Segment(agent, venv, obs, keys, n, device)
        out = checkpoint(seg, *[state[k] for k in keys], use_reentrant=False)
        total = out[0] if total is None else total + out[0]
        state = dict(zip(keys, out[1:]))
        obs = seg.final_obs
        stats.loss_sum += seg.stats.loss_sum
        stats.correct += seg.stats.correct
        stats.count += seg.stats.count
        done += n
    return total, state, obs, stats


class InitialStateCall(nn.Module):
    """``agent.initial_state`` as a module call, so ``functional_call`` can swap parameters in."""

    def __init__(self, agent: Agent):
        super().__init__()
        self.agent = agent

    def forward(self, batch_size: int, generator: torch.Generator | None) -> State:
        return self.agent.initial_state(batch_size, generator)


def population_rollout(
    agent: Agent,
    env: Any,
    params: Mapping[str, Tensor],
    state: State,
    rows_of_member: np.ndarray,
    lifetimes: int,
    steps: int,
    device: torch.device,
    obs: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Run ``P`` members (params [P, ...], state [P, B, ...]) for ``steps`` steps in one batch.

    The env holds ``S * lifetimes`` rows: ``S`` data streams of ``lifetimes`` lifetimes each,
    already reset (``obs`` is its first observation); member ``i`` sees stream
    ``rows_of_member[i]``. Returns per-member float64 arrays ``loss_sum``, ``correct``,
    ``count`` (masked sums over its lifetimes and steps) and bool ``nonfinite``.
    """
    venv = unwrap_vector_env(env)
    P, B, C = len(rows_of_member), int(lifetimes), venv.task.n_classes
    streams = venv.num_envs // B
    if streams * B != venv.num_envs or rows_of_member.max(initial=0) >= streams:
        raise ValueError(f"env has {venv.num_envs} rows, not a multiple of {B} lifetimes covering the members' streams.")
    # row r of member i's lifetime b in the env: stream * B + b
    env_rows = (rows_of_member[:, None] * B + np.arange(B)[None, :]).reshape(-1)
    # the first member of each stream drives the env (its actions do not change the data)
    driver = np.full(streams, -1)
    for i, s in enumerate(rows_of_member):
        if driver[s] < 0:
            driver[s] = i
    if (driver < 0).any():
        raise ValueError(f"env streams {np.flatnonzero(driver < 0).tolist()} are seen by no member; build the env with only the used streams.")
    driver_rows = (driver[:, None] * B + np.arange(B)[None, :]).reshape(-1)

    loss_sum = np.zeros(P * B)
    correct = np.zeros(P * B)
    count = np.zeros(P * B)
    nonfinite = np.zeros(P * B, dtype=bool)
    y_prev = np.zeros((P * B, C), np.float32)
    err_prev = np.zeros((P * B, C), np.float32)
    with torch.no_grad():
        for t in range(steps):
            x = obs["x"][env_rows]
            o = {
                "x": torch.from_numpy(x.reshape(P, B, *x.shape[1:])).to(device),
                "y_prev": torch.from_numpy(y_prev.reshape(P, B, C)).to(device),
                "err_prev": torch.from_numpy(err_prev.reshape(P, B, C)).to(device),
            }
            logits, state = population_step(agent, params, o, state, shared_obs=False)
            logits_np = np.asarray(logits.reshape(P * B, C).cpu().numpy(), dtype=np.float64)
            finite = np.isfinite(logits_np).all(axis=1)
            if not finite.all():
                nonfinite |= ~finite
                logits_np = np.where(finite[:, None], logits_np, 0.0)
            obs, _r, _term, _trunc, info = venv.step(logits_np[driver_rows].astype(np.float32))
            if "label" not in info:
                raise RuntimeError("the env started new lifetimes mid-rollout; ask for at most the remaining steps.")
            labels = info["label"][env_rows]
            mask = info["loss_mask"][env_rows]
            loss, err, hit = score(logits_np, labels)
            loss_sum += np.where(mask, loss, 0.0)
            correct += hit & mask
            count += mask
            y_prev = one_hot(labels, C)
            err_prev = err
    per_member = lambda a: a.reshape(P, B).sum(axis=1)  # noqa: E731
    return {
        "loss_sum": per_member(loss_sum),
        "correct": per_member(correct),
        "count": per_member(count),
        "nonfinite": nonfinite.reshape(P, B).any(axis=1),
    }

"""The agent protocol: functional agents with an explicit, typed lifetime state.

An agent is a ``torch.nn.Module`` whose parameters are its *meta-parameters* (what a learner
meta-trains) and whose lifetime is carried entirely in a state dict of tensors, batch first::

    state = agent.initial_state(batch_size, generator)
    logits, state = agent.step(obs, state)   # obs: {"x": [B, *x_shape], "y_prev": [B, C], "err_prev": [B, C]}

In one ``step`` the agent first learns from ``y_prev``/``err_prev`` (the label and error of
its previous prediction) and then predicts for ``x``. ``state_kinds`` tells which state
entries are activations and which are (fast) weights, so learners can reset one and keep the
other (learning to remember) or branch a lifetime.

A population of meta-parameters runs in one batch through :func:`population_step`, which
vmaps ``torch.func.functional_call`` over a leading population axis: no Python loop over
members.
"""

from __future__ import annotations

import math
import operator
from typing import Callable, Literal, Mapping

import torch
from torch import Tensor, nn

from rulegym.envs.protocol import LOGIT_BOUND, check_flag  # noqa: F401  (check_flag: agents' yes/no options)

State = dict[str, Tensor]
Obs = dict[str, Tensor]
StateKind = Literal["activation", "weight"]
OBS_KEYS = ("x", "y_prev", "err_prev")


class Agent(nn.Module):
    """Base class of every rulegym agent (learned rules and baselines).

    Subclasses set ``state_kinds`` and implement ``initial_state`` and ``_step``; ``_step``
    must be a pure function of (parameters, obs, state) -- no in-place changes to its inputs,
    no data-dependent Python branches -- so ``torch.func`` can vmap and differentiate it.
    ``step`` validates its inputs and calls ``_step``; ``forward`` (used under vmap) does not.
    """

    #: kind of every state entry: "activation" (reset when a lifetime is branched) or "weight"
    state_kinds: Mapping[str, StateKind] = {}
    #: False for agents whose step is not a differentiable torch function of their parameters
    #: (e.g. a wrapped stable-baselines3 policy): learners, ``population_step`` and the gradient
    #: checks of the conformance suite do not apply to them.
    differentiable: bool = True

    def __init__(self, x_dim: int, n_classes: int):
        super().__init__()
        for name, value, what in (("x_dim", x_dim, "input features"), ("n_classes", n_classes, "classes")):
            if isinstance(value, bool) or not _is_integer(value):
                raise ValueError(f"{name} must be an integer (the number of {what}), got {value!r}.")
        if x_dim < 1 or n_classes < 2:
            raise ValueError(f"an agent needs x_dim >= 1 and n_classes >= 2, got x_dim={x_dim}, n_classes={n_classes}.")
        self.x_dim = int(x_dim)
        self.n_classes = int(n_classes)

    def initial_state(self, batch_size: int, generator: torch.Generator | None = None) -> State:
        raise NotImplementedError

    def _step(self, obs: Obs, state: State) -> tuple[Tensor, State]:
        """Learn from obs["y_prev"]/obs["err_prev"], then predict for obs["x"] ([B, x_dim])."""
        raise NotImplementedError

    def step(self, obs: Obs, state: State) -> tuple[Tensor, State]:
        """One online step with validated inputs: returns logits [B, n_classes] and the new state."""
        obs = check_obs(obs, self.x_dim, self.n_classes)
        check_state(self, state, batch=obs["x"].shape[0])
        x, dtype, device = obs["x"], self.dtype, self.device
        if x.dtype != dtype:
            raise TypeError(
                f"obs['x'] has dtype {x.dtype} but this agent computes in {dtype}; convert the observation "
                f"(x.to({dtype}); rulegym envs emit float32) or the agent (agent.to({x.dtype}))."
            )
        if x.device != device:
            raise ValueError(
                f"obs['x'] is on {x.device} but the agent is on {device}; move the observation with "
                f".to({str(device)!r}) (run_lifetime does this at the edge)."
            )
        return self._step(obs, state)

    def forward(self, obs: Obs, state: State) -> tuple[Tensor, State]:
        """Unchecked step (for ``torch.func.functional_call``/vmap); x may be unflattened."""
        x = obs["x"]
        return self._step({**obs, "x": x.reshape(x.shape[0], -1)}, state)

    @property
    def device(self) -> torch.device:
        """Where the agent computes: its first parameter's (or buffer's) device, else the CPU."""
        t = _first_float(self)
        return t.device if t is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The float dtype it computes in (and wants observations in): its parameters', else the default."""
        t = _first_float(self)
        return t.dtype if t is not None else torch.get_default_dtype()


def _first_float(module: nn.Module) -> Tensor | None:
    for t in module.parameters():
        if t.is_floating_point():
            return t
    for t in module.buffers():
        if t.is_floating_point():
            return t
    return None


def bound_logits(z: Tensor) -> Tensor:
    """Squash raw outputs into the env's finite action box: 100 * tanh(z / 100) (identity near 0)."""
    return LOGIT_BOUND * torch.tanh(z / LOGIT_BOUND)


def check_positive_int(name: str, value: object) -> int:
    """A clear error for a size option that is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _is_integer(value: object) -> bool:
    """Python and NumPy integers (anything with __index__), not floats such as 2.5 or 2.0."""
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def check_layer_sizes(name: str, value: object) -> tuple[int, ...]:
    """Hidden layer sizes as a tuple of positive ints: a sequence such as ``(32, 16)`` (``()``:
    no hidden layer), or one int for a single hidden layer (``32`` means ``(32,)``)."""
    if _is_integer(value) and not isinstance(value, bool):
        value = (value,)
    try:
        sizes = list(value)  # type: ignore[call-overload]
    except TypeError:
        sizes = None
    if sizes is None or isinstance(value, (str, bytes)):
        raise ValueError(f"{name} must be hidden layer sizes, e.g. (32,) or (64, 32) or one int, got {value!r}.")
    for h in sizes:
        if isinstance(h, bool) or not _is_integer(h) or operator.index(h) < 1:
            raise ValueError(f"{name}: a hidden layer size must be a positive integer, got {h!r} in {value!r}.")
    return tuple(operator.index(h) for h in sizes)


def check_positive_number(name: str, value: object) -> float:
    """A clear error for a rate or scale option that is not a finite number > 0."""
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}.")
    return float(value)


def check_fraction(name: str, value: object) -> float:
    """A decay-like option (momentum, Adam's betas): a number in [0, 1), not a bool or a string."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}.")
    return float(value)


def check_obs(obs: Obs, x_dim: int, n_classes: int) -> Obs:
    """Validate an observation batch and flatten x to [B, x_dim]; clear errors for bad input."""
    if not isinstance(obs, Mapping):
        raise TypeError(f"obs must be a dict of tensors with keys {list(OBS_KEYS)}, got {type(obs).__name__}.")
    missing = [k for k in OBS_KEYS if k not in obs]
    if missing:
        raise KeyError(f"observation is missing {missing}; an observation holds {list(OBS_KEYS)} (see rulegym.envs.protocol).")
    x = obs["x"]
    if not isinstance(x, Tensor):
        raise TypeError(f"obs['x'] must be a torch.Tensor, got {type(x).__name__}; convert with torch.from_numpy.")
    if not x.is_floating_point():
        raise TypeError(f"obs['x'] must be floating point, got {x.dtype}.")
    if x.dim() < 2:
        raise ValueError(
            f"obs['x'] has shape {tuple(x.shape)}; it needs a leading batch axis, [B, {x_dim}] or [B, *x_shape] "
            "(use x.unsqueeze(0) for a single lifetime)."
        )
    batch = x.shape[0]
    x = x.reshape(batch, -1)
    if x.shape[1] != x_dim:
        raise ValueError(f"obs['x'] has {x.shape[1]} features per example, this agent was built for x_dim={x_dim}.")
    out = {"x": x}
    for k in ("y_prev", "err_prev"):
        v = obs[k]
        if not isinstance(v, Tensor) or not v.is_floating_point():
            got = v.dtype if isinstance(v, Tensor) else type(v).__name__
            raise TypeError(f"obs[{k!r}] must be a floating-point torch.Tensor, got {got}.")
        if v.dtype != x.dtype or v.device != x.device:
            raise TypeError(
                f"obs[{k!r}] is {v.dtype} on {v.device} but obs['x'] is {x.dtype} on {x.device}; "
                "give every observation entry the same dtype and device."
            )
        if tuple(v.shape) != (batch, n_classes):
            raise ValueError(f"obs[{k!r}] has shape {tuple(v.shape)}, expected {(batch, n_classes)}.")
        out[k] = v
    for k, v in out.items():
        # one reduction per entry on the hot path: a NaN or inf makes the sum non-finite (the
        # element-wise check then confirms, so finite values whose sum overflows pass)
        if not torch.isfinite(v.sum()) and not torch.isfinite(v).all():
            raise ValueError(f"obs[{k!r}] contains NaN or inf; check the environment or the preprocessing.")
    return out


def check_state(agent: Agent, state: State, batch: int | None = None) -> None:
    """Check that a state holds exactly the agent's entries, as tensors with one row per lifetime."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict of tensors (from agent.initial_state), got {type(state).__name__}.")
    missing = set(agent.state_kinds) - set(state)
    if missing:
        raise KeyError(f"state is missing {sorted(missing)}; start lifetimes with agent.initial_state(batch_size).")
    unknown = set(state) - set(agent.state_kinds)
    if unknown:
        raise KeyError(
            f"state has entries {sorted(unknown)} that {type(agent).__name__}.state_kinds does not declare; "
            "every state entry must be declared as 'activation' or 'weight'."
        )
    for k, v in state.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"state[{k!r}] must be a torch.Tensor, got {type(v).__name__}.")
        if batch is not None and (v.dim() == 0 or v.shape[0] != batch):
            raise ValueError(
                f"state[{k!r}] has shape {tuple(v.shape)} but the observation holds {batch} lifetimes; "
                "state entries are batch first -- build the state with agent.initial_state(batch_size) for this batch."
            )


def reset_activations(agent: Agent, state: State, generator: torch.Generator | None = None) -> State:
    """A state with the activations of a fresh lifetime and the current (fast) weights.

    Learning to remember resets activations between tasks and keeps what the agent wrote into
    its weights; branching a lifetime does the same. Fresh activations come from
    ``agent.initial_state`` (on the device of the given state).
    """
    check_state(agent, state)
    if not state:  # a stateless agent (e.g. a feed-forward SB3 policy)
        return {}
    batch = next(iter(state.values())).shape[0]
    fresh = agent.initial_state(batch, generator)
    return {
        k: (fresh[k].to(device=v.device, dtype=v.dtype) if agent.state_kinds[k] == "activation" else v)
        for k, v in state.items()
    }


def stack_params(agents_or_params: list[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Stack several meta-parameter dicts along a new leading population axis."""
    keys = list(agents_or_params[0])
    return {k: torch.stack([p[k] for p in agents_or_params]) for k in keys}


def population_step(
    agent: Agent, params: Mapping[str, Tensor], obs: Obs, state: State, shared_obs: bool = True
) -> tuple[Tensor, State]:
    """Step a population of meta-parameters ([P, ...] each) in one batch.

    ``state`` entries are [P, B, ...]; ``obs`` entries are [B, ...] shared by every member
    (``shared_obs``, as ES antithetic pairs share their data) or [P, B, ...].
    """
    fn: Callable = lambda p, o, s: torch.func.functional_call(agent, dict(p), (o, s))
    return torch.func.vmap(fn, in_dims=(0, None if shared_obs else 0, 0), randomness="different")(dict(params), obs, state)

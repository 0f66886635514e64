"""stable-baselines3 on rulegym: train an RL policy on an online task, then run it as an agent.

RL is a baseline for learned learning rules: a policy maps the observation
``(x_t, y_prev, err_prev)`` to logits and is rewarded with minus the cross-entropy. A plain
MLP policy (PPO, A2C) can only learn a fixed input-to-label map across lifetimes; a recurrent
policy (``RecurrentPPO`` from the optional ``sb3-contrib``) can in principle learn within a
lifetime, like the Meta RNN, by storing what ``y_prev``/``err_prev`` taught it in its LSTM state.

Two pieces:

* :func:`train_sb3` trains an SB3 algorithm on a rulegym *single* env, through two wrappers:
  :class:`FlattenObservation` (x, y_prev and err_prev concatenated into one Box) and
  :class:`RescaleLogits` (the policy acts in [-1, 1]^C, the usual range for SB3's Gaussian
  policies, and ``logit_scale`` maps that to logits; the env's own bound of +-100 would make
  the reward scale, and PPO's exploration, hopeless).
* :class:`SB3Agent` wraps the trained policy in the agent protocol, so it is evaluated by the
  same loop (:func:`rulegym.train.loop.run_lifetime`) as every other agent: the action is the
  deterministic one (the Gaussian's mean, clipped to [-1, 1]) times ``logit_scale``; the state
  is empty, or the LSTM state of a recurrent policy ("activation" entries).

An ``SB3Agent`` is *not differentiable* and has *no meta-parameters*: the SB3 policy is held
outside the module's parameters (``agent.parameters()`` is empty; ``differentiable = False``),
it runs under ``torch.no_grad()``, so learners, ``population_step`` and gradient checks do not
apply. It is trained by RL, by :func:`train_sb3`, and nothing else.

The module imports stable-baselines3 lazily, so ``import rulegym.agents`` stays fast; the
registry entry ``sb3`` builds an agent from a saved model (``model="path.zip"``), a trained
algorithm object, or, with no model, a freshly initialised policy (for smoke tests).
"""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from rulegym.agents.base import Agent, Obs, State
from rulegym.agents.registry import register_agent
from rulegym.envs.protocol import LOGIT_BOUND

__all__ = [
    "ALGORITHMS",
    "DEFAULT_KWARGS",
    "FlattenObservation",
    "RescaleLogits",
    "SB3Agent",
    "flat_observation",
    "make_sb3_env",
    "recurrent_available",
    "train_sb3",
]

#: algorithm names understood by :func:`train_sb3` (recurrent_ppo needs sb3-contrib)
ALGORITHMS = ("ppo", "a2c", "recurrent_ppo")

#: Defaults that suit rulegym's tasks. gamma = 0: a prediction never changes later inputs or
#: labels, so each reward is credited to its own action only -- a contextual bandit -- which
#: removes the variance of bootstrapped returns (a recurrent policy still learns to use its
#: memory: the gradient of the current action's log-probability flows through the LSTM).
DEFAULT_KWARGS: dict[str, dict[str, Any]] = {
    "ppo": {"gamma": 0.0, "gae_lambda": 1.0, "n_steps": 64, "batch_size": 128, "n_epochs": 10, "learning_rate": 1e-3},
    "a2c": {"gamma": 0.0, "gae_lambda": 1.0, "n_steps": 8, "learning_rate": 1e-3},
    "recurrent_ppo": {"gamma": 0.0, "gae_lambda": 1.0, "n_steps": 128, "batch_size": 128, "n_epochs": 10, "learning_rate": 1e-3},
}


def recurrent_available() -> bool:
    """Whether sb3-contrib (RecurrentPPO) is installed: ``pip install rulegym[rl]``."""
    try:
        import sb3_contrib  # noqa: F401
    except ImportError:
        return False
    return True


def _algorithm_class(algo: str):
    if algo == "ppo":
        from stable_baselines3 import PPO

        return PPO
    if algo == "a2c":
        from stable_baselines3 import A2C

        return A2C
    if algo == "recurrent_ppo":
        try:
            from sb3_contrib import RecurrentPPO
        except ImportError as exc:
            raise ImportError(
                "algo='recurrent_ppo' needs sb3-contrib, which is not installed; "
                "install it with `pip install sb3-contrib` (or `pip install rulegym[rl]`)."
            ) from exc
        return RecurrentPPO
    raise ValueError(f"unknown algo {algo!r}; valid: {', '.join(ALGORITHMS)}.")


def _policy_class(algo: str):
    if algo == "recurrent_ppo":
        _algorithm_class(algo)  # the clear error when sb3-contrib is missing
        from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy

        return RecurrentActorCriticPolicy
    from stable_baselines3.common.policies import ActorCriticPolicy

    _algorithm_class(algo)
    return ActorCriticPolicy


class FlattenObservation(gym.ObservationWrapper):
    """The Dict observation as one float32 Box: ``[x.ravel(), y_prev, err_prev]``.

    :class:`SB3Agent` builds the same vector from a batch of observations, so a policy trained
    on this wrapper sees exactly what it saw in training.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, spaces.Dict) or set(space.spaces) != {"x", "y_prev", "err_prev"}:
            raise TypeError(f"FlattenObservation expects a rulegym env (Dict of x, y_prev, err_prev), got {space}.")
        parts = [space["x"], space["y_prev"], space["err_prev"]]
        self.observation_space = spaces.Box(
            low=np.concatenate([p.low.ravel() for p in parts]).astype(np.float32),
            high=np.concatenate([p.high.ravel() for p in parts]).astype(np.float32),
            dtype=np.float32,
        )

    def observation(self, observation):
        return flat_observation(observation)


def flat_observation(observation: Mapping[str, Any]) -> np.ndarray:
    """One rulegym observation (no batch axis) as the flat float32 vector SB3 policies see."""
    return np.concatenate([np.asarray(observation[k], dtype=np.float32).ravel() for k in ("x", "y_prev", "err_prev")])


class RescaleLogits(gym.ActionWrapper):
    """Actions in [-1, 1]^C become logits ``logit_scale * action`` for the env."""

    def __init__(self, env: gym.Env, logit_scale: float = 10.0):
        super().__init__(env)
        self.logit_scale = check_logit_scale(logit_scale, float(env.action_space.high.max()))
        n = env.action_space.shape[0]
        self.action_space = spaces.Box(-1.0, 1.0, shape=(n,), dtype=np.float32)

    def action(self, action):
        return (self.logit_scale * np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)).astype(np.float32)


def check_logit_scale(logit_scale: object, bound: float = LOGIT_BOUND) -> float:
    """``logit_scale`` as a float: finite, positive and at most the env's logit bound (a larger one
    would send logits outside the env's action box)."""
    if isinstance(logit_scale, bool) or not (isinstance(logit_scale, (int, float, np.number)) and np.isfinite(logit_scale) and logit_scale > 0):
        raise ValueError(f"logit_scale must be positive and finite, got {logit_scale!r}.")
    if logit_scale > bound:
        raise ValueError(f"logit_scale={logit_scale} exceeds the env's logit bound {bound}.")
    return float(logit_scale)


def make_sb3_env(env_id: str, *, logit_scale: float = 10.0, **env_options: Any) -> gym.Env:
    """A rulegym single env as SB3 wants it: flat Box observations, actions in [-1, 1]."""
    import rulegym.envs  # noqa: F401  (registers the env ids)

    return RescaleLogits(FlattenObservation(gym.make(env_id, **env_options)), logit_scale)


class SB3Agent(Agent):
    """A trained stable-baselines3 policy in the agent protocol (deterministic, not differentiable).

    ``step`` concatenates the observation like :class:`FlattenObservation`, takes the policy's
    deterministic action (clipped to [-1, 1]) and returns ``logit_scale * action`` as logits.
    Non-recurrent policies keep no state; recurrent ones keep their LSTM's (h, c), batch first,
    as activations. The policy is not a submodule: ``agent.parameters()`` is empty and
    ``agent.to(...)`` does not move it (use ``agent.policy.to(...)``).
    """

    differentiable = False

    def __init__(self, policy, x_dim: int, n_classes: int, *, logit_scale: float = 10.0, model: Any = None):
        super().__init__(x_dim, n_classes)
        expected = x_dim + 2 * n_classes
        got = policy.observation_space.shape
        if got != (expected,):
            raise ValueError(
                f"the policy takes observations of shape {got}, but x_dim={x_dim} and n_classes={n_classes} "
                f"flatten to ({expected},); was it trained on another env?"
            )
        if policy.action_space.shape != (n_classes,):
            raise ValueError(f"the policy acts in {policy.action_space.shape}, expected ({n_classes},) logits.")
        # kept outside nn.Module's registry: the policy is not a meta-parameter of this agent
        object.__setattr__(self, "_policy", policy)
        object.__setattr__(self, "_model", model)
        policy.set_training_mode(False)
        self.logit_scale = check_logit_scale(logit_scale)
        self.recurrent = hasattr(policy, "lstm_hidden_state_shape")
        self.state_kinds = {"lstm_h": "activation", "lstm_c": "activation"} if self.recurrent else {}

    @property
    def policy(self):
        """The wrapped SB3 policy."""
        return self._policy

    @property
    def model(self):
        """The SB3 algorithm it came from, when known (to save or keep training it)."""
        return self._model

    @property
    def device(self) -> torch.device:
        return self._policy.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self._policy.parameters()).dtype

    @classmethod
    def from_model(cls, model, *, logit_scale: float = 10.0) -> SB3Agent:
        """Wrap a trained SB3 algorithm (its ``.policy``) trained on :func:`make_sb3_env`."""
        policy = model.policy
        n_classes = int(policy.action_space.shape[0])
        x_dim = int(policy.observation_space.shape[0]) - 2 * n_classes
        return cls(policy, x_dim, n_classes, logit_scale=logit_scale, model=model)

    def initial_state(self, batch_size: int, generator: torch.Generator | None = None) -> State:
        """Empty, or zero LSTM states [B, n_layers, hidden] for a recurrent policy."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        if not self.recurrent:
            return {}
        layers, _, hidden = self._policy.lstm_hidden_state_shape
        zeros = torch.zeros(batch_size, layers, hidden, device=self.device)
        return {"lstm_h": zeros, "lstm_c": zeros.clone()}

    def _step(self, obs: Obs, state: State) -> tuple[Tensor, State]:
        flat = torch.cat([obs["x"], obs["y_prev"], obs["err_prev"]], dim=1)
        dtype = self.dtype
        with torch.no_grad():
            if self.recurrent:
                lstm = (state["lstm_h"].transpose(0, 1).contiguous(), state["lstm_c"].transpose(0, 1).contiguous())
                starts = torch.zeros(flat.shape[0], device=flat.device, dtype=dtype)
                actions, (h, c) = self._policy._predict(flat.to(dtype), lstm, starts, deterministic=True)
                new_state = {"lstm_h": h.transpose(0, 1), "lstm_c": c.transpose(0, 1)}
            else:
                actions = self._policy._predict(flat.to(dtype), deterministic=True)
                new_state = {}
            logits = self.logit_scale * actions.reshape(flat.shape[0], self.n_classes).clamp(-1.0, 1.0)
        return logits.to(flat.dtype), new_state

    def extra_repr(self) -> str:
        return (
            f"x_dim={self.x_dim}, n_classes={self.n_classes}, policy={type(self._policy).__name__}, "
            f"logit_scale={self.logit_scale}, recurrent={self.recurrent}"
        )


def train_sb3(
    env_id: str,
    total_timesteps: int,
    *,
    algo: str = "ppo",
    env_options: Mapping[str, Any] | None = None,
    n_envs: int = 8,
    seed: int = 0,
    logit_scale: float = 10.0,
    policy: str | None = None,
    algo_kwargs: Mapping[str, Any] | None = None,
    device: str = "cpu",
    verbose: int = 0,
) -> SB3Agent:
    """Train an SB3 algorithm on ``env_id`` (reward = minus the cross-entropy) and wrap it as an agent.

    Args:
        env_id: a rulegym env id; ``env_options`` go to ``gym.make`` (e.g. ``x_shape=16``).
        total_timesteps: environment steps summed over the ``n_envs`` parallel envs.
        algo: "ppo", "a2c" or "recurrent_ppo" (needs sb3-contrib).
        logit_scale: logits = logit_scale * action, action in [-1, 1]^C.
        policy: SB3 policy name; default "MlpPolicy" ("MlpLstmPolicy" for recurrent_ppo).
        algo_kwargs: override :data:`DEFAULT_KWARGS` (e.g. ``policy_kwargs``, ``learning_rate``).

    Training is deterministic for a given seed on CPU. The returned agent keeps the algorithm
    as ``agent.model`` (``agent.model.save(path)``; reload with ``make_agent("sb3", ..., model=path)``).
    """
    from stable_baselines3.common.env_util import make_vec_env

    cls = _algorithm_class(algo)
    if policy is None:
        policy = "MlpLstmPolicy" if algo == "recurrent_ppo" else "MlpPolicy"
    options = dict(env_options or {})
    vec = make_vec_env(
        lambda: make_sb3_env(env_id, logit_scale=logit_scale, **options), n_envs=n_envs, seed=seed
    )
    kwargs = {**DEFAULT_KWARGS.get(algo, {}), **dict(algo_kwargs or {})}
    model = cls(policy, vec, seed=seed, device=device, verbose=verbose, **kwargs)
    model.learn(total_timesteps=int(total_timesteps))
    vec.close()
    return SB3Agent.from_model(model, logit_scale=logit_scale)


@register_agent("sb3")
def sb3_agent(
    x_dim: int,
    n_classes: int,
    model: Any = None,
    *,
    algo: str = "ppo",
    logit_scale: float = 10.0,
    seed: int = 0,
) -> SB3Agent:
    """An SB3 policy as an agent: ``model`` is a saved model's path, an SB3 algorithm, or None.

    With ``model=None`` the policy is freshly initialised (seeded by ``seed``; untrained) -- for
    smoke tests and benchmarks of the adapter; train one with :func:`train_sb3`.
    """
    if model is None:
        flat = spaces.Box(-np.inf, np.inf, shape=(x_dim + 2 * n_classes,), dtype=np.float32)
        act = spaces.Box(-1.0, 1.0, shape=(n_classes,), dtype=np.float32)
        policy_cls = _policy_class(algo)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            policy = policy_cls(flat, act, lambda _: 0.0)
        return SB3Agent(policy, x_dim, n_classes, logit_scale=logit_scale)
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        model = _algorithm_class(algo).load(model, device="cpu")
    agent = SB3Agent.from_model(model, logit_scale=logit_scale)
    if (agent.x_dim, agent.n_classes) != (x_dim, n_classes):
        raise ValueError(
            f"the SB3 model was trained for x_dim={agent.x_dim}, n_classes={agent.n_classes}, "
            f"not x_dim={x_dim}, n_classes={n_classes}."
        )
    return agent


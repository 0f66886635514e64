"""Every registered agent honours the agent protocol on one env of every task family.

Parametrised over ``rulegym.agents.AGENTS``, so an agent is covered as soon as it registers.
Each agent is built with its defaults (what users get) for the env's sizes; lifetimes are short
except the 200-step numerical-health check. Agents with ``differentiable = False`` (a wrapped
SB3 policy) and agents without meta-parameters skip the population and gradient checks.

Families: image stream (scikit-learn digits: embedded, fast), Sum Sign, Random, Omniglot
episodes and the Wizard of Oz character stream (these two need ``RULEGYM_DATA``).
"""

from __future__ import annotations

import copy
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

import rulegym.envs  # noqa: F401  (registers the env ids)
from rulegym.agents import AGENTS, make_agent, population_step, reset_activations, stack_params
from rulegym.train.loop import env_dims, run_lifetime

#: one env of each family: (env id, options keeping it small, needs RULEGYM_DATA)
FAMILIES = {
    "image": ("rulegym/Digits-v0", {"lifetime_length": 200}, False),
    "sum_sign": ("rulegym/SumSign-v0", {"x_shape": 16, "lifetime_length": 200}, False),
    "random": ("rulegym/Random-v0", {"x_shape": 16, "n_images": 10, "lifetime_length": 200}, False),
    "omniglot": ("rulegym/Omniglot-v0", {"resize": 14, "episodes": 34}, True),  # 34 episodes of 6 steps
    "chars": ("rulegym/WizardOfOz-v0", {"lifetime_length": 200}, True),
}
AGENT_NAMES = sorted(AGENTS)
B = 3


def _env(family: str, num_envs: int = B):
    env_id, options, needs_data = FAMILIES[family]
    if needs_data and not os.environ.get("RULEGYM_DATA"):
        pytest.skip(f"{env_id} needs a data root: set RULEGYM_DATA (e.g. ../shared/data)")
    return gym.make_vec(env_id, num_envs=num_envs, **options)


_AGENT_CACHE: dict[tuple[str, int, int], torch.nn.Module] = {}


def _agent(name: str, env):
    """The agent for this env's sizes, built once per (name, sizes) with a fixed torch seed."""
    x_dim, n_classes = env_dims(env)
    key = (name, x_dim, n_classes)
    if key not in _AGENT_CACHE:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            _AGENT_CACHE[key] = make_agent(name, x_dim, n_classes)
    return _AGENT_CACHE[key]


def _obs(env, seed: int = 0) -> dict[str, torch.Tensor]:
    obs, _ = env.reset(seed=seed)
    return {k: torch.from_numpy(v) for k, v in obs.items()}


def _meta_params(agent) -> dict[str, torch.Tensor]:
    return {n: p for n, p in agent.named_parameters() if p.requires_grad}


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


agents = pytest.mark.parametrize("name", AGENT_NAMES)
families = pytest.mark.parametrize("family", list(FAMILIES))


@agents
@families
def test_step_shapes_and_state_layout(name, family):
    env = _env(family)
    agent = _agent(name, env)
    x_dim, n_classes = env_dims(env)
    state = agent.initial_state(B, torch.Generator().manual_seed(0))
    assert set(state) == set(agent.state_kinds), "state entries and state_kinds must name the same keys"
    assert set(agent.state_kinds.values()) <= {"activation", "weight"}
    for k, v in state.items():
        assert isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == B, f"state[{k!r}] is not batch first"
    with torch.no_grad():
        logits, new_state = agent.step(_obs(env), state)
    assert logits.shape == (B, n_classes)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert set(new_state) == set(state)
    for k, v in new_state.items():
        assert v.shape == state[k].shape and v.dtype == state[k].dtype, f"state[{k!r}] changed shape or dtype"


@agents
@families
def test_no_nan_over_a_200_step_lifetime(name, family):
    env = _env(family, num_envs=2)
    agent = _agent(name, env)
    with torch.no_grad():
        result = run_lifetime(agent, env, 200, seed=1, keep_logits=True)
    assert result.loss.shape == (200, 2)
    assert torch.isfinite(result.logits).all() and torch.isfinite(result.loss).all()
    assert all(torch.isfinite(v).all() for v in result.state.values() if v.is_floating_point())
    acc = result.accuracy_curve()
    assert np.all(np.isnan(acc) | ((acc >= 0) & (acc <= 1)))


@agents
@families
def test_same_seed_same_logits(name, family):
    env = _env(family)
    agent = _agent(name, env)
    with torch.no_grad():
        a = run_lifetime(agent, env, 12, seed=7, keep_logits=True)
        b = run_lifetime(agent, env, 12, seed=7, keep_logits=True)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.labels, b.labels)


@agents
@families
def test_population_step_equals_loop_over_members(name, family):
    env = _env(family)
    agent = _agent(name, env)
    params = _meta_params(agent)
    if not agent.differentiable or not params:
        pytest.skip(f"{name} has no differentiable meta-parameters")
    members = []
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # three nearby points of meta-parameter space, as in ES
        members.append({n: p.detach() + 0.05 * torch.randn(p.shape, generator=gen) for n, p in params.items()})
    pop_params = stack_params(members)
    states = [agent.initial_state(B, torch.Generator().manual_seed(i)) for i in range(3)]
    pop_state = stack_params(states)
    copies = []
    for i in range(3):
        member = copy.deepcopy(agent)
        member.load_state_dict(members[i], strict=False)
        copies.append(member)
    obs_np, _ = env.reset(seed=0)
    with torch.no_grad():
        for _t in range(4):
            obs = {k: torch.from_numpy(v) for k, v in obs_np.items()}
            pop_logits, pop_state = population_step(agent, pop_params, obs, pop_state)
            for i, member in enumerate(copies):
                logits_i, states[i] = member.step(obs, states[i])
                torch.testing.assert_close(pop_logits[i], logits_i, rtol=1e-4, atol=1e-5)
                for k in states[i]:
                    torch.testing.assert_close(pop_state[k][i], states[i][k], rtol=1e-4, atol=1e-5)
            obs_np, *_ = env.step(pop_logits[0].numpy())


@agents
@families
def test_gradients_reach_every_meta_parameter(name, family):
    env = _env(family, num_envs=2)
    agent = _agent(name, env)
    params = _meta_params(agent)
    if not agent.differentiable or not params:
        pytest.skip(f"{name} has no differentiable meta-parameters")
    agent.zero_grad(set_to_none=True)
    result = run_lifetime(agent, env, 24, seed=2, grad=True)
    loss = result.mean_loss()
    assert loss.requires_grad
    loss.backward()
    missing = [n for n, p in params.items() if p.grad is None or not bool((p.grad != 0).any())]
    agent.zero_grad(set_to_none=True)
    assert not missing, f"no gradient reaches {missing} through a lifetime"


@agents
@families
def test_reset_activations_keeps_weights(name, family):
    env = _env(family)
    agent = _agent(name, env)
    with torch.no_grad():
        state = run_lifetime(agent, env, 8, seed=3).state
        reset = reset_activations(agent, state, torch.Generator().manual_seed(5))
        fresh = agent.initial_state(B, torch.Generator().manual_seed(5))
    assert set(reset) == set(state)
    for k, kind in agent.state_kinds.items():
        if kind == "weight":
            assert torch.equal(reset[k], state[k]), f"weight {k!r} changed"
        else:
            assert torch.equal(reset[k], fresh[k]), f"activation {k!r} was not reset"
    with torch.no_grad():
        logits, _ = agent.step(_obs(env), reset)  # a reset state is a valid state
    assert torch.isfinite(logits).all()


@agents
@families
def test_bad_input_raises_clear_errors(name, family):
    env = _env(family)
    agent = _agent(name, env)
    x_dim, n_classes = env_dims(env)
    state = agent.initial_state(B, torch.Generator().manual_seed(0))
    good = _obs(env)
    good = {**good, "x": good["x"].reshape(B, -1)}
    cases = [
        ({k: v for k, v in good.items() if k != "err_prev"}, KeyError, "err_prev"),
        ({**good, "x": torch.zeros(B, x_dim + 1)}, ValueError, "x_dim"),
        ({**good, "y_prev": torch.zeros(B, n_classes + 1)}, ValueError, "y_prev"),
        ({**good, "x": good["x"][0]}, ValueError, "batch"),
        ({**good, "x": good["x"].to(torch.int64)}, TypeError, "floating"),
        ({**good, "x": good["x"].double()}, TypeError, "dtype"),
        ({**good, "x": good["x"].numpy()}, TypeError, "torch.Tensor"),
        ({**good, "x": torch.full_like(good["x"], float("nan"))}, ValueError, "NaN"),
        ({**good, "err_prev": torch.full_like(good["err_prev"], float("inf"))}, ValueError, "NaN or inf"),
    ]
    for obs, error, words in cases:
        with pytest.raises(error, match=words):
            agent.step(obs, state)
    if state:
        with pytest.raises(KeyError, match="missing"):
            agent.step(good, dict(list(state.items())[1:]))
        with pytest.raises(ValueError, match="lifetimes"):
            agent.step(good, agent.initial_state(B + 1))
    with pytest.raises(KeyError, match="declare"):
        agent.step(good, {**state, "bogus": torch.zeros(B)})

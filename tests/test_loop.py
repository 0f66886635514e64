"""The lifetime loop: one batch of lifetimes, a differentiable loss, and clear errors."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
import pytest
import torch

import rulegym.envs  # noqa: F401  (registers the env ids)
from rulegym.agents import make_agent
from rulegym.train.loop import LifetimeResult, env_dims, evaluate, rollout, run_lifetime

ENV_ID, OPTS = "rulegym/SumSign-v0", {"x_shape": 8, "lifetime_length": 30}


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _setup(num_envs=4, name="sgd", **agent_options):
    env = gym.make_vec(ENV_ID, num_envs=num_envs, **OPTS)
    return env, make_agent(name, *env_dims(env), hidden=0, **agent_options)


def test_whole_lifetime_by_default_and_records_match_the_env():
    env, agent = _setup()
    result = run_lifetime(agent, env, seed=0, keep_logits=True)
    assert isinstance(result, LifetimeResult) and (result.steps, result.num_lifetimes) == (30, 4)
    for field in (result.correct, result.loss_mask, result.labels):
        assert field.shape == (30, 4)
    assert result.correct.dtype == torch.bool and result.loss_mask.dtype == torch.bool
    # the env scored the same logits: its correctness agrees with argmax, its loss with ours
    assert torch.equal(result.correct, result.logits.argmax(-1) == result.labels)
    logp = torch.log_softmax(result.logits.double(), -1)
    ce = -logp.gather(-1, result.labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(result.loss.double(), ce, rtol=1e-5, atol=1e-6)
    curve = result.accuracy_curve()
    assert curve.shape == (30,) and np.allclose(curve, result.correct.double().mean(1).numpy())
    assert result.accuracy() == pytest.approx(float(result.correct.double().mean()))


def test_grad_flag_controls_the_graph_regardless_of_the_callers_mode():
    env, agent = _setup()
    with torch.no_grad():
        kept = run_lifetime(agent, env, 5, seed=0, grad=True)
    assert kept.loss.requires_grad and kept.mean_loss().requires_grad
    assert not run_lifetime(agent, env, 5, seed=0, grad=False).loss.requires_grad
    loss = run_lifetime(agent, env, 10, seed=0, grad=True).mean_loss()
    loss.backward()
    assert agent.log_lr.grad is not None and agent.log_lr.grad != 0


def test_rollout_continues_a_lifetime_exactly():
    """Truncated BPTT runs a lifetime in chunks; chunks joined equal one run."""
    env, agent = _setup(name="adam")
    whole = run_lifetime(agent, env, 20, seed=3, keep_logits=True)
    first = run_lifetime(agent, env, 8, seed=3, keep_logits=True)
    state = {k: v.detach() for k, v in first.state.items()}
    second = rollout(agent, env, first.obs, state, 12, keep_logits=True)
    torch.testing.assert_close(torch.cat([first.logits, second.logits]), whole.logits, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="remaining steps"):
        rollout(agent, env, second.obs, second.state, 11)


def test_observations_reach_the_agent_without_copies():
    env, _ = _setup()
    seen = {}
    obs, _ = env.reset(seed=0)
    from rulegym.train.loop import _to_torch

    t = _to_torch(obs, torch.device("cpu"))
    for k in obs:
        seen[k] = t[k].data_ptr() == obs[k].ctypes.data
    assert all(seen.values())


def test_masked_metrics_skip_uncounted_steps():
    loss = torch.tensor([[1.0, 3.0], [2.0, 4.0]], requires_grad=True)
    mask = torch.tensor([[False, False], [True, False]])
    result = LifetimeResult(
        loss=loss,
        correct=torch.tensor([[True, True], [True, False]]),
        loss_mask=mask,
        labels=torch.zeros(2, 2, dtype=torch.int64),
        state={},
        obs={},
    )
    assert np.isnan(result.accuracy_curve()[0]) and result.accuracy_curve()[1] == 1.0
    assert result.accuracy() == 1.0
    m = result.mean_loss()
    assert float(m.detach()) == 2.0
    m.backward()
    assert loss.grad.tolist() == [[0.0, 0.0], [1.0, 0.0]]


@pytest.mark.skipif(not os.environ.get("RULEGYM_DATA"), reason="Omniglot needs RULEGYM_DATA")
def test_omniglot_counts_only_query_steps():
    env = gym.make_vec("rulegym/Omniglot-v0", num_envs=3, resize=14, episodes=2)
    agent = make_agent("sgd", *env_dims(env), hidden=0)
    with torch.no_grad():
        result = run_lifetime(agent, env, seed=0)
    curve = result.accuracy_curve()
    support = result.loss_mask.numpy().sum(1) == 0
    assert support.any() and (~support).any()
    assert np.isnan(curve[support]).all() and not np.isnan(curve[~support]).any()


def test_evaluate_builds_runs_and_closes():
    agent = make_agent("adam", 8, 2, hidden=0)
    result = evaluate(agent, ENV_ID, num_envs=2, seed=0, env_options=OPTS)
    assert result.loss.shape == (30, 2) and not result.loss.requires_grad


def test_clear_errors():
    env, agent = _setup()
    with pytest.raises(ValueError, match="exceeds the lifetime length"):
        run_lifetime(agent, env, 31, seed=0)
    with pytest.raises(ValueError, match="positive integer"):
        run_lifetime(agent, env, 0, seed=0)
    with pytest.raises(ValueError, match="env_dims"):
        run_lifetime(make_agent("sgd", 9, 2), env, seed=0)
    with pytest.raises(TypeError, match="OnlineVectorEnv"):
        run_lifetime(agent, gym.make(ENV_ID, **OPTS), seed=0)
    truncated = gym.make_vec(ENV_ID, num_envs=2, max_episode_steps=10, **OPTS)
    assert run_lifetime(agent, truncated, seed=0).steps == 10  # a time limit shortens the lifetime

"""stable-baselines3 on rulegym: PPO learns Sum Sign and runs through the same loop as every agent."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import rulegym.envs  # noqa: F401  (registers the env ids)
from rulegym.agents import make_agent
from rulegym.agents.sb3_adapter import SB3Agent, flat_observation, make_sb3_env, recurrent_available, train_sb3
from rulegym.train.loop import run_lifetime

ENV_ID, OPTS = "rulegym/SumSign-v0", {"x_shape": 16}


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def ppo_agent(one_thread) -> SB3Agent:
    return train_sb3(ENV_ID, 4096, env_options=OPTS, seed=0)


def test_ppo_learns_sum_sign_evaluated_by_run_lifetime(ppo_agent):
    env = gym.make_vec(ENV_ID, num_envs=16, lifetime_length=200, **OPTS)
    result = run_lifetime(ppo_agent, env, seed=1000)  # lifetimes never seen in training
    assert result.accuracy() >= 0.85, f"online accuracy {result.accuracy():.3f}"
    assert result.loss.shape == (200, 16)


def test_sb3_agent_is_a_stateless_non_differentiable_agent(ppo_agent):
    assert ppo_agent.differentiable is False
    assert list(ppo_agent.parameters()) == []  # the policy is not a meta-parameter
    assert ppo_agent.initial_state(4) == {} and ppo_agent.state_kinds == {}
    assert (ppo_agent.x_dim, ppo_agent.n_classes) == (16, 2)


def test_agent_logits_equal_the_policy_deterministic_action(ppo_agent):
    """SB3Agent's batched step is SB3's own predict (mean action, clipped) times logit_scale."""
    vec = gym.make_vec(ENV_ID, num_envs=5, **OPTS)
    obs_np, _ = vec.reset(seed=4)
    vec.step(np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32))  # nonzero y_prev/err_prev
    obs_np, *_ = vec.step(np.random.default_rng(1).normal(size=(5, 2)).astype(np.float32))
    obs = {k: torch.from_numpy(v) for k, v in obs_np.items()}
    with torch.no_grad():
        logits, _ = ppo_agent.step(obs, {})
    flat = np.stack([flat_observation({k: v[i] for k, v in obs_np.items()}) for i in range(5)])
    action, _ = ppo_agent.model.predict(flat, deterministic=True)
    np.testing.assert_allclose(logits.numpy(), ppo_agent.logit_scale * action, rtol=1e-5, atol=1e-5)


def test_wrapped_env_passes_sb3_check_env():
    from stable_baselines3.common.env_checker import check_env

    env = make_sb3_env(ENV_ID, lifetime_length=20, **OPTS)
    check_env(env, warn=True)
    assert env.action_space.low.min() == -1.0 and env.action_space.high.max() == 1.0
    _, _, _, _, info = env.step(np.array([1.0, -1.0], np.float32))
    assert env.unwrapped is not None and "loss" in info


def test_saved_model_loads_through_the_registry(ppo_agent, tmp_path):
    path = tmp_path / "ppo_sumsign.zip"
    ppo_agent.model.save(path)
    loaded = make_agent("sb3", 16, 2, model=str(path))
    env = gym.make_vec(ENV_ID, num_envs=4, lifetime_length=30, **OPTS)
    with torch.no_grad():
        a = run_lifetime(ppo_agent, env, seed=0, keep_logits=True)
        b = run_lifetime(loaded, env, seed=0, keep_logits=True)
    torch.testing.assert_close(a.logits, b.logits)
    with pytest.raises(ValueError, match="trained for x_dim=16"):
        make_agent("sb3", 17, 2, model=str(path))


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown algo"):
        train_sb3(ENV_ID, 10, algo="dqn", env_options=OPTS)
    with pytest.raises(ValueError, match="logit_scale"):
        make_sb3_env(ENV_ID, logit_scale=1000.0, **OPTS)
    for bad in (-10.0, 0.0, math.nan, 1e4, True):  # the agent checks it as the env wrapper does
        with pytest.raises(ValueError, match="logit_scale"):
            make_agent("sb3", 16, 2, logit_scale=bad)
    if not recurrent_available():
        with pytest.raises(ImportError, match="sb3-contrib"):
            make_agent("sb3", 16, 2, algo="recurrent_ppo")


@pytest.mark.skipif(not recurrent_available(), reason="sb3-contrib (RecurrentPPO) is not installed")
def test_recurrent_ppo_keeps_its_lstm_state_as_activations():
    agent = train_sb3(
        ENV_ID,
        512,
        algo="recurrent_ppo",
        env_options=OPTS,
        seed=0,
        algo_kwargs={"n_steps": 32, "policy_kwargs": {"lstm_hidden_size": 8, "net_arch": [16]}},
    )
    assert agent.recurrent and set(agent.state_kinds.values()) == {"activation"}
    state = agent.initial_state(3)
    assert state["lstm_h"].shape == (3, 1, 8)
    env = gym.make_vec(ENV_ID, num_envs=3, lifetime_length=20, **OPTS)
    with torch.no_grad():
        result = run_lifetime(agent, env, seed=0, keep_logits=True)
    assert torch.isfinite(result.logits).all()
    # the batched step equals SB3's own predict carrying the LSTM state
    obs_np, _ = env.reset(seed=0)
    sb3_state, starts = None, np.zeros(3, dtype=bool)
    state = agent.initial_state(3)
    for _ in range(5):
        obs = {k: torch.from_numpy(v) for k, v in obs_np.items()}
        with torch.no_grad():
            logits, state = agent.step(obs, state)
        flat = np.stack([flat_observation({k: v[i] for k, v in obs_np.items()}) for i in range(3)])
        action, sb3_state = agent.model.predict(flat, state=sb3_state, episode_start=starts, deterministic=True)
        np.testing.assert_allclose(logits.numpy(), agent.logit_scale * action, rtol=1e-5, atol=1e-5)
        obs_np, *_ = env.step(logits.numpy())

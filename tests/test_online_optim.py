"""Online SGD / Adam agents reproduce torch.optim step for step.

Each of a batch of 3 lifetimes trains its own network inside the agent state; next to it, a
plain ``nn.Module`` copy of that lifetime's initial network is trained by ``torch.optim`` on the
same stream (one optimiser step per revealed label, then a prediction). After 200 steps the
weights must agree to 1e-5.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rulegym.envs  # noqa: F401  (registers the env ids)
from rulegym.agents import make_agent
from rulegym.agents.online_optim import OnlineAdam, OnlineSGD
from rulegym.envs.protocol import LOGIT_BOUND
from rulegym.train.loop import run_lifetime

B, STEPS = 3, 200
ENV_ID, ENV_OPTS = "rulegym/Random-v0", {"x_shape": 24, "n_classes": 5, "n_images": 12, "lifetime_length": STEPS}


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


class Bounded(nn.Module):
    """The agent's output bound as a module, so the reference network is the same function."""

    def forward(self, z):
        return LOGIT_BOUND * torch.tanh(z / LOGIT_BOUND)


def reference_net(agent, state, i: int) -> nn.Sequential:
    """nn.Linear layers holding lifetime i's initial weights."""
    layers: list[nn.Module] = []
    for k, (fan_out, fan_in) in enumerate(agent.layer_shapes):
        lin = nn.Linear(fan_in, fan_out)
        with torch.no_grad():
            lin.weight.copy_(state[f"w{k}"][i])
            lin.bias.copy_(state[f"b{k}"][i])
        layers.append(lin)
        if k < len(agent.layer_shapes) - 1:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers, Bounded())


def reference_optimizer(agent, params):
    lr = float(agent.lr.detach())
    if isinstance(agent, OnlineAdam):
        return torch.optim.Adam(params, lr=lr, betas=agent.betas, eps=agent.eps)
    return torch.optim.SGD(params, lr=lr, momentum=agent.momentum)


CASES = [
    ("sgd", {"hidden": 0, "lr": 0.05}),
    ("sgd", {"hidden": 16, "lr": 0.05}),
    ("sgd", {"hidden": 16, "lr": 0.02, "momentum": 0.9}),
    ("adam", {"hidden": 0, "lr": 3e-3}),
    ("adam", {"hidden": 16, "lr": 3e-3, "betas": (0.8, 0.99)}),
]


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_trajectory_equals_torch_optim(name, options):
    env = gym.make_vec(ENV_ID, num_envs=B, **ENV_OPTS)
    agent = make_agent(name, 24, 5, **options)
    obs, _ = env.reset(seed=3)
    state = agent.initial_state(B, torch.Generator().manual_seed(3))
    refs = [reference_net(agent, state, i) for i in range(B)]
    opts = [reference_optimizer(agent, r.parameters()) for r in refs]
    prev: list[tuple[torch.Tensor, torch.Tensor]] = []
    max_logit_diff = 0.0
    with torch.no_grad():
        for t in range(STEPS):
            o = {k: torch.from_numpy(v) for k, v in obs.items()}
            logits, state = agent.step(o, state)
            for i, (ref, opt) in enumerate(zip(refs, opts)):
                if t > 0:  # the label of step t-1 is revealed now: one optimiser step on it
                    x_prev, y_prev = prev[i]
                    opt.zero_grad()
                    with torch.enable_grad():
                        F.cross_entropy(ref(x_prev), y_prev).backward()
                    opt.step()
                ref_logits = ref(o["x"][i : i + 1])
                max_logit_diff = max(max_logit_diff, float((ref_logits[0] - logits[i]).abs().max()))
            obs, _, _, _, info = env.step(logits.numpy())
            labels = torch.from_numpy(info["label"])
            prev = [(o["x"][i : i + 1].clone(), labels[i : i + 1]) for i in range(B)]
    worst = 0.0
    for i, ref in enumerate(refs):
        linears = [m for m in ref if isinstance(m, nn.Linear)]
        for k, lin in enumerate(linears):
            worst = max(worst, float((state[f"w{k}"][i] - lin.weight.detach()).abs().max()))
            worst = max(worst, float((state[f"b{k}"][i] - lin.bias.detach()).abs().max()))
    assert worst <= 1e-5, f"weights drifted from torch.optim by {worst:.3g}"
    assert max_logit_diff <= 1e-4, f"logits drifted from the reference by {max_logit_diff:.3g}"
    # the weights really moved (so the comparison is not vacuous)
    fresh = agent.initial_state(B, torch.Generator().manual_seed(3))
    assert float((state["w0"] - fresh["w0"]).abs().max()) > 1e-2


def test_adam_state_counts_real_examples_only():
    agent = OnlineAdam(4, 3, hidden=0)
    state = agent.initial_state(2, torch.Generator().manual_seed(0))
    zeros = torch.zeros(2, 3)
    obs = {"x": torch.randn(2, 4), "y_prev": zeros, "err_prev": zeros}
    with torch.no_grad():
        _, state = agent.step(obs, state)  # first step of a lifetime: nothing to learn from
        assert state["step"].tolist() == [0.0, 0.0]
        y = F.one_hot(torch.tensor([0, 2]), 3).float()
        _, state = agent.step({**obs, "y_prev": y, "err_prev": torch.full((2, 3), 0.1) - y}, state)
    assert state["step"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_no_label_step_changes_no_weights_or_optimizer_state(name, options):
    """After a few labelled steps (non-zero momentum buffers and moments), a step on which no
    label has arrived (y_prev and err_prev zero, e.g. right after reset_activations) must leave
    that lifetime's weights and optimiser state exactly as they were -- as a torch.optim
    optimiser that is not stepped -- while the other lifetimes of the batch do take their step."""
    agent = make_agent(name, 6, 3, **options)
    state = agent.initial_state(2, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    y = torch.zeros(2, 3)
    err = torch.zeros(2, 3)
    with torch.no_grad():
        for t in range(4):
            logits, state = agent.step({"x": torch.randn(2, 6, generator=g), "y_prev": y, "err_prev": err}, state)
            y = F.one_hot(torch.tensor([t % 3, (t + 1) % 3]), 3).float()
            err = torch.softmax(logits, -1) - y
        # lifetime 0 has no label this step, lifetime 1 has one
        y_mixed, err_mixed = y.clone(), err.clone()
        y_mixed[0], err_mixed[0] = 0.0, 0.0
        _, after = agent.step({"x": torch.randn(2, 6, generator=g), "y_prev": y_mixed, "err_prev": err_mixed}, state)
    kept = [k for k, kind in agent.state_kinds.items() if kind == "weight"]
    moments = [k for k in kept if k.startswith(("buf_", "m_", "v_"))]
    if options.get("momentum") or name == "adam":
        assert moments and all(float(state[k][0].abs().max()) > 0 for k in moments)  # not vacuous
    for k in kept:
        assert torch.equal(after[k][0], state[k][0]), f"{k} changed on a step without a label"
    assert not torch.equal(after["w0"][1], state["w0"][1])  # the labelled lifetime learned
    if name == "adam":
        assert after["step"].tolist() == [3.0, 4.0]  # the first step of the lifetime had no label either


def test_initial_weights_follow_nn_linear_init():
    agent = OnlineSGD(100, 10, hidden=50)
    state = agent.initial_state(8, torch.Generator().manual_seed(0))
    for k, fan_in in ((0, 100), (1, 50)):
        for name in (f"w{k}", f"b{k}"):
            bound = 1 / np.sqrt(fan_in)
            v = state[name]
            assert float(v.abs().max()) <= bound
            assert float(v.abs().max()) > 0.9 * bound  # uniform over the whole interval
            assert abs(float(v.std()) - bound / np.sqrt(3)) < 0.1 * bound  # U(-b, b) has std b/sqrt(3)
    # each lifetime draws its own network; the same generator seed draws the same ones
    assert not torch.equal(state["w0"][0], state["w0"][1])
    again = agent.initial_state(8, torch.Generator().manual_seed(0))
    assert all(torch.equal(state[k], again[k]) for k in state)


def test_state_kinds_and_linear_option():
    adam = make_agent("adam", 10, 3, hidden=None)
    assert adam.hidden == 0 and adam.layer_shapes == [(3, 10)]
    kinds = adam.state_kinds
    assert {kinds[k] for k in ("w0", "b0", "m_w0", "v_w0", "m_b0", "v_b0", "step")} == {"weight"}
    assert kinds["x_prev"] == "activation" and kinds["gain_prev"] == "activation"
    sgd = make_agent("sgd", 10, 3, hidden=8)
    assert sgd.state_kinds["h_prev"] == "activation" and sgd.state_kinds["w1"] == "weight"
    assert set(sgd.state_kinds) == set(sgd.initial_state(2))
    with pytest.raises(ValueError, match="lr must be a positive"):
        make_agent("sgd", 10, 3, lr=-1.0)
    with pytest.raises(ValueError, match="hidden must be"):
        make_agent("sgd", 10, 3, hidden=-4)
    with pytest.raises(TypeError, match="unknown option"):
        make_agent("adam", 10, 3, beta=(0.9, 0.99))


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_learns_sum_sign_and_lr_gets_gradient(name):
    env = gym.make_vec("rulegym/SumSign-v0", num_envs=8, x_shape=16, lifetime_length=300)
    agent = make_agent(name, 16, 2, hidden=0)
    result = run_lifetime(agent, env, seed=0, grad=True)
    assert np.nanmean(result.accuracy_curve()[-100:]) > 0.85
    result.mean_loss().backward()
    assert agent.log_lr.grad is not None and float(agent.log_lr.grad) != 0.0

"""VSML: the model's equations, its fast kernels, gradients, populations and the protocol."""

from __future__ import annotations

import math

import gymnasium as gym
import pytest
import torch

import rulegym.envs  # noqa: F401
from rulegym.agents import make_agent, population_step, stack_params
from rulegym.agents import vsml_native
from rulegym.agents.vsml import VSML
from rulegym.agents.vsml_kernels import LSTMTick, lstm_tick_reference, lstm_ticks
from rulegym.agents.vsml_theory import dense_equivalent, simple_rnn_form_step
from rulegym.train.loop import run_lifetime


def obs_batch(L: int, x_dim: int, n_classes: int, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(n_classes, (L,), generator=g)
    onehot = torch.nn.functional.one_hot(y, n_classes).to(dtype)
    p = torch.softmax(torch.randn(L, n_classes, generator=g, dtype=dtype), -1)
    return {"x": torch.randn(L, x_dim, generator=g, dtype=dtype), "y_prev": onehot, "err_prev": p - onehot}


@pytest.mark.parametrize("a", [2, 3])
def test_theorem1_simple_rnn_form_equals_a_standard_rnn(a):
    """Single-layer VSML in simple-RNN form == one RNN with the shared sparse matrix W~."""
    n = 3
    g = torch.Generator().manual_seed(a)
    w, c = torch.randn(n, n, generator=g, dtype=torch.float64), torch.randn(n, n, generator=g, dtype=torch.float64) / a
    s = torch.randn(a, a, n, generator=g, dtype=torch.float64)
    big = dense_equivalent(w, c, a)
    flat = s.reshape(-1)
    for _ in range(5):
        s = simple_rnn_form_step(s, w, c)
        flat = torch.tanh(flat @ big)
        torch.testing.assert_close(s.reshape(-1), flat, rtol=1e-12, atol=1e-12)
    # W~ is sparse and shared: only the entries of W and C occur in it
    nonzero = big[big != 0]
    assert nonzero.numel() <= big.numel() * (a + 1) / a**2  # a sub-RNN hears itself and A others
    values = torch.cat([w.reshape(-1), c.reshape(-1), (w + c).reshape(-1)])
    assert all(torch.isclose(values, v).any() for v in nonzero.unique())


def tick_inputs(shape, msg: int = 8, seed: int = 1):
    L, n, b, a = shape  # state [lifetimes, N, outputs, inputs]
    g = torch.Generator().manual_seed(seed)
    h, c = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    u = torch.randn(4 * n, n, generator=g) * 0.5
    w = torch.randn(4 * n, msg, generator=g) * 0.5
    m = torch.randn(L, a, msg, generator=g)
    gb = torch.randn(L, 4 * n, b, generator=g)
    return h, c, u, w, m, gb


@pytest.mark.parametrize("shape", [(3, 4, 3, 5), (2, 16, 10, 700), (1, 8, 5, 2100), (1, 4, 9, 1000)])
@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("save_gates", [True, False])
@pytest.mark.parametrize("native", [True, False])
def test_fast_tick_equals_reference(shape, clip, save_gates, native, monkeypatch):
    """The chunked in-place path, the native tick and the autograd Function compute the reference tick."""
    import rulegym.agents.vsml_kernels as kernels

    if native and not vsml_native.available():
        pytest.skip("no C++ compiler for the native tick")
    monkeypatch.setattr(kernels, "SAVE_GATES_BYTES", 1 << 40 if save_gates else 0)
    monkeypatch.setattr(kernels, "USE_NATIVE", native)
    h, c, u, w, m, gb = tick_inputs(shape)
    ga = kernels.gate_inputs(w, m)
    h0, c0 = h.clone(), c.clone()
    with torch.no_grad():
        ref = lstm_tick_reference(*lstm_tick_reference(h, c, u, ga, gb, clip), u, ga, gb, clip)
        fast = lstm_ticks(h, c, u, w, m, gb, clip, ticks=2, mean_inputs=True)
    torch.testing.assert_close(fast[0], ref[0], rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(fast[1], ref[1], rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(fast[2], ref[0].mean(dim=3), rtol=1e-5, atol=2e-6)
    assert torch.equal(h, h0) and torch.equal(c, c0)  # the caller's state is not modified
    if native:
        return
    # gradients of the memory-lean autograd Function equal autograd through the reference
    g = torch.Generator().manual_seed(2)
    args = [t.double().requires_grad_() for t in (h, c, u, ga, gb)]
    wh, wc = torch.randn(shape, dtype=torch.float64, generator=g), torch.randn(shape, dtype=torch.float64, generator=g)
    out = LSTMTick.apply(*args, clip)
    mine = torch.autograd.grad((out[0] * wh).sum() + (out[1] * wc).sum(), args)
    out = lstm_tick_reference(*args, clip)
    theirs = torch.autograd.grad((out[0] * wh).sum() + (out[1] * wc).sum(), args)
    for x, y in zip(mine, theirs):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10)


def tiny_vsml(**opts) -> VSML:
    torch.manual_seed(0)
    return VSML(3, 2, state_size=4, msg_size=3, **opts).double()


def lifetime_loss(agent: VSML, steps: int = 4) -> torch.Tensor:
    state = agent.initial_state(2, torch.Generator().manual_seed(3))
    state = {k: v.double() for k, v in state.items()}
    total = 0.0
    for t in range(steps):
        obs = obs_batch(2, 3, 2, seed=t, dtype=torch.float64)
        logits, state = agent.step(obs, state)
        total = total + torch.nn.functional.cross_entropy(logits, obs["y_prev"].argmax(-1))
    return total


@pytest.mark.parametrize(
    "opts",
    [{}, {"hidden": (2,), "backward_pass": True, "layer_norm": True, "separate_backward": True, "per_layer": True}],
)
def test_gradients_through_a_lifetime_match_finite_differences(opts):
    agent = tiny_vsml(**opts)
    # make the gates less saturated so finite differences see every parameter
    with torch.no_grad():
        for cell in agent.cells:
            cell.bias.mul_(0.2)
    params = [p for p in agent.parameters() if p.requires_grad]
    loss = lifetime_loss(agent)
    grads = torch.autograd.grad(loss, params)
    g = torch.Generator().manual_seed(0)
    eps = 1e-6
    for p, grad in zip(params, grads):
        for _ in range(2):  # a couple of random coordinates per tensor
            idx = tuple(int(torch.randint(s, (1,), generator=g)) for s in p.shape)
            with torch.no_grad():
                old = p[idx].item()
                p[idx] = old + eps
                up = lifetime_loss(agent).item()
                p[idx] = old - eps
                down = lifetime_loss(agent).item()
                p[idx] = old
            fd = (up - down) / (2 * eps)
            assert math.isclose(grad[idx].item(), fd, rel_tol=1e-4, abs_tol=1e-8), (p.shape, idx, grad[idx].item(), fd)
    assert all(gr.abs().sum() > 0 for gr in grads)  # gradients reach every meta-parameter


def test_population_in_one_batch_equals_a_loop():
    agent = VSML(5, 3, state_size=4, msg_size=4, hidden=(4,))
    base = {k: v.detach() for k, v in agent.named_parameters()}
    g = torch.Generator().manual_seed(0)
    members = [{k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(3)]
    stacked = stack_params(members)
    state = agent.initial_state(2, torch.Generator().manual_seed(1))
    pop_state = {k: v.expand(3, *v.shape).clone() for k, v in state.items()}
    obs = obs_batch(2, 5, 3)
    with torch.no_grad():
        for _ in range(3):
            pop_logits, pop_state = population_step(agent, stacked, obs, pop_state)
        for i, member in enumerate(members):
            s = state
            for _ in range(3):
                logits, s = torch.func.functional_call(agent, member, (obs, s))
            torch.testing.assert_close(pop_logits[i], logits, rtol=1e-5, atol=1e-6)


def test_initial_state_and_biases():
    agent = VSML(784, 10)
    assert sum(p.numel() for p in agent.parameters()) < 5000  # the same few thousand numbers at any size
    cell = agent.cells[0]
    n = agent.state_size
    assert torch.all(cell.bias[:n] == -5.0) and torch.all(cell.bias[n : 2 * n] == 5.0)
    state = agent.initial_state(4, torch.Generator().manual_seed(0))
    c = state["c0"]
    assert c.shape == (4, 16, 10, 784) and torch.all(state["h0"] == 0)
    assert torch.all(c[:, 8:] == 0)  # half of the cell state starts at zero
    drawn = c[:, :8] * math.sqrt(784)  # the rest: truncated normal scaled by 1/sqrt(fan-in)
    assert drawn.abs().max() <= 2.0 and 0.8 < drawn.std() < 0.9  # std of N(0,1) truncated at +-2: 0.88
    assert agent.state_kinds == {"h0": "weight", "c0": "weight"}


def test_any_input_and_output_size_with_the_same_meta_parameters():
    small = VSML(10, 3)
    big = VSML(50, 7)
    big.load_state_dict(small.state_dict())  # same parameter shapes
    state = big.initial_state(2)
    logits, _ = big.step(obs_batch(2, 50, 7), state)
    assert logits.shape == (2, 7) and logits.abs().max() <= 100


def test_prediction_is_bounded_first_component_of_the_last_forward_message():
    agent = VSML(4, 3, ticks=1)
    state = agent.initial_state(1)
    obs = obs_batch(1, 4, 3)
    logits, new = agent.step(obs, state)
    h = new["h0"]
    proj = agent.messages[0].fwd
    msg0 = proj.weight[0] @ h.mean(dim=3)[0] + proj.bias[0]  # [B]
    torch.testing.assert_close(logits[0], 100 * torch.tanh(msg0 / 100))


def test_clip_state_bounds_the_cells():
    agent = VSML(6, 2, clip_state=0.25)
    state = agent.initial_state(2)
    with torch.no_grad():
        for t in range(3):
            _, state = agent.step(obs_batch(2, 6, 2, seed=t), state)
    assert state["c0"].abs().max() <= 0.25


def test_bad_options():
    with pytest.raises(ValueError, match="state_size"):
        VSML(4, 2, state_size=0)
    with pytest.raises(ValueError, match="clip_state"):
        VSML(4, 2, clip_state=-1)
    with pytest.raises(TypeError, match="valid options"):
        make_agent("vsml", 4, 2, state=3)


def test_vsml_and_meta_rnn_see_the_same_stream():
    env_a = gym.make_vec("rulegym/SumSign-v0", num_envs=2, x_shape=12, lifetime_length=15)
    env_b = gym.make_vec("rulegym/SumSign-v0", num_envs=2, x_shape=12, lifetime_length=15)
    with torch.no_grad():
        ra = run_lifetime(make_agent("vsml", 12, 2), env_a, seed=7)
        rb = run_lifetime(make_agent("meta_rnn", 12, 2, hidden=8), env_b, seed=7)
    assert torch.equal(ra.labels, rb.labels)
    assert torch.isfinite(ra.loss).all()


def test_runs_on_every_env_family_through_the_loop():
    for env_id, opts in [
        ("rulegym/Digits-v0", {"lifetime_length": 10}),
        ("rulegym/Random-v0", {"x_shape": 16, "lifetime_length": 10}),
    ]:
        env = gym.make_vec(env_id, num_envs=2, **opts)
        task = env.unwrapped.task
        agent = make_agent("vsml", int(torch.tensor(task.x_shape).prod()), task.n_classes)
        result = run_lifetime(agent, env, seed=0, grad=True)
        result.mean_loss().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.parameters() if p.requires_grad)


def test_conv_layer_with_one_position_is_a_dense_layer():
    """A 3x3 kernel on a 3x3 image has one position: the conv VSML is then the dense 9->8->C net."""
    conv = VSML(9, 3, conv=True, input_shape=(1, 3, 3), hidden=(), state_size=4, msg_size=3, conv_channels=8)
    dense = VSML(9, 3, hidden=(8,), state_size=4, msg_size=3)
    dense.load_state_dict(conv.state_dict())
    state = conv.initial_state(2, torch.Generator().manual_seed(0))
    assert state["h0"].shape == (2, 4, 8, 9) and state["h1"].shape == (2, 4, 3, 8)
    s_conv, s_dense = dict(state), dict(state)
    for t in range(3):
        obs = obs_batch(2, 9, 3, seed=t)
        a, s_conv = conv.step(obs, s_conv)
        b, s_dense = dense.step(obs, s_dense)
        torch.testing.assert_close(a, b)


def test_conv_layer_averages_per_position_updates():
    from rulegym.agents.vsml_kernels import conv_lstm_tick

    L, n, k, o, p = 2, 3, 4, 2, 5
    g = torch.Generator().manual_seed(0)
    h, c = torch.randn(L, n, o, k, generator=g), torch.randn(L, n, o, k, generator=g)
    u = torch.randn(4 * n, n, generator=g)
    ga, gb = torch.randn(L, 4 * n, k, p, generator=g), torch.randn(L, 4 * n, o, p, generator=g)
    h_new, c_new, h_pos = conv_lstm_tick(h, c, u, ga, gb, None)
    per_pos = [lstm_tick_reference(h, c, u, ga[..., q], gb[..., q], None) for q in range(p)]
    torch.testing.assert_close(h_pos, torch.stack([hp for hp, _ in per_pos], dim=-1))
    torch.testing.assert_close(c_new, torch.stack([cp for _, cp in per_pos], dim=-1).mean(-1))
    torch.testing.assert_close(h_new, h_pos.mean(-1))
    with pytest.raises(ValueError, match="input_shape"):
        VSML(784, 10, conv=True, input_shape=(1, 28, 27))

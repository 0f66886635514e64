"""The Meta RNN, Hebbian fast weights and Fast Weight Memory baselines.

Each agent is checked against a hand computation of its source's equations, for the online
protocol's causality (learn from step t-1, then predict for x_t), for gradients through a
lifetime, for population runs via vmap, and for determinism; the Meta RNN must also actually
learn to learn a tiny memorisation task by BPTT.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rulegym.agents import make_agent, population_step, reset_activations, stack_params
from rulegym.agents.base import bound_logits
from rulegym.agents.fwm import fwm_lookup, fwm_write
from rulegym.agents.hebbian import HebbianFastWeights
from rulegym.agents.meta_rnn import MetaRNN
from rulegym.envs.protocol import LOGIT_BOUND

torch.set_num_threads(2)

X_DIM, N_CLASSES = 4, 3

# small instances of every agent and its main variants: (id, registry name, options)
VARIANTS = [
    ("meta_rnn", "meta_rnn", {"hidden": 8}),
    ("meta_rnn_ticks2", "meta_rnn", {"hidden": 8, "ticks": 2}),
    ("meta_rnn_learn_init", "meta_rnn", {"hidden": 8, "learn_init": True}),
    ("lstm16", "lstm16", {}),
    ("hebbian_hebb", "hebbian", {"eta_init": 0.3}),
    ("hebbian_oja", "hebbian", {"rule": "oja", "eta_init": 0.3}),
    ("hebbian_corrected_per_conn", "hebbian", {"post": "corrected", "eta_per_connection": True, "eta_init": 0.3}),
    ("fwm", "fwm", {"hidden": 8, "fw_size": 4, "n_reads": 2}),
    ("fwm_l2", "fwm", {"hidden": 8, "fw_size": 4, "n_reads": 1, "key_norm": "l2"}),
    ("class_means", "class_means", {"temperature": 0.5}),
]
VARIANT_IDS = [v[0] for v in VARIANTS]


def build(name: str, options: dict, seed: int = 0, x_dim: int = X_DIM, n_classes: int = N_CLASSES):
    torch.manual_seed(seed)
    return make_agent(name, x_dim, n_classes, **options)


def random_stream(batch: int, steps: int, x_dim: int = X_DIM, n_classes: int = N_CLASSES, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, steps, x_dim, generator=g), torch.randint(n_classes, (batch, steps), generator=g)


def run_lifetime(agent, x, y, state=None, step=None):
    """Play the online protocol like the envs do: err_prev = softmax(logits) - onehot(label)."""
    batch, steps, _ = x.shape
    c = agent.n_classes
    step = step or agent.step
    state = agent.initial_state(batch) if state is None else state
    y_prev = torch.zeros(batch, c)
    err_prev = torch.zeros(batch, c)
    all_logits, states = [], []
    for t in range(steps):
        logits, state = step({"x": x[:, t], "y_prev": y_prev, "err_prev": err_prev}, state)
        all_logits.append(logits)
        states.append(state)
        y_prev = nn.functional.one_hot(y[:, t], c).float()
        err_prev = (logits.softmax(-1) - y_prev).detach()
    return torch.stack(all_logits, 1), states


# ------------------------------------------------------------------------------ Meta RNN


def manual_meta_rnn(agent: MetaRNN, x, y, ticks: int):
    """The same lifetime with a stock nn.LSTMCell holding the agent's weights."""
    cell = nn.LSTMCell(agent.in_dim, agent.hidden)
    cell.load_state_dict(agent.cell.state_dict())
    batch, steps, _ = x.shape
    h = c = torch.zeros(batch, agent.hidden)
    y_prev = err_prev = torch.zeros(batch, agent.n_classes)
    out = []
    for t in range(steps):
        u = torch.cat([x[:, t], err_prev, y_prev], -1)
        for _ in range(ticks):
            h, c = cell(u, (h, c))
        z = h @ agent.readout.weight.T + agent.readout.bias
        logits = 100.0 * torch.tanh(z / 100.0)
        out.append(logits)
        y_prev = nn.functional.one_hot(y[:, t], agent.n_classes).float()
        err_prev = logits.softmax(-1) - y_prev
    return torch.stack(out, 1)


@pytest.mark.parametrize("ticks", [1, 2])
def test_meta_rnn_equals_lstmcell_on_input_x_err_y(ticks):
    agent = build("meta_rnn", {"hidden": 6, "ticks": ticks})
    x = torch.tensor([[[1.0, -0.5, 0.2, 0.0], [0.3, 0.3, -1.0, 2.0], [-1.0, 0.0, 0.5, 0.5]]])
    y = torch.tensor([[0, 2, 1]])
    with torch.no_grad():
        got, _ = run_lifetime(agent, x, y)
        want = manual_meta_rnn(agent, x, y, ticks)
        other = manual_meta_rnn(agent, x, y, 3 - ticks)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(got[:, 1:], other[:, 1:], atol=1e-4), "ticks must change the number of LSTM updates"


def test_meta_rnn_input_order_is_x_err_y():
    """Zero the input weights of all but one block of u: only that obs entry may matter."""
    agent = build("meta_rnn", {"hidden": 5})
    c = N_CLASSES
    blocks = {"x": slice(0, X_DIM), "err_prev": slice(X_DIM, X_DIM + c), "y_prev": slice(X_DIM + c, X_DIM + 2 * c)}
    g = torch.Generator().manual_seed(3)
    base = {"x": torch.randn(2, X_DIM, generator=g), "err_prev": torch.randn(2, c, generator=g), "y_prev": torch.rand(2, c, generator=g)}
    for keep, sl in blocks.items():
        mask = torch.zeros(agent.in_dim)
        mask[sl] = 1.0
        with torch.no_grad():
            agent.cell.weight_ih.mul_(mask)  # remaining weights stay as built (nonzero)
        for key in blocks:
            changed = {**base, key: base[key] + 1.0}
            same = torch.allclose(agent.step(changed, agent.initial_state(2))[0], agent.step(base, agent.initial_state(2))[0])
            assert same == (key != keep), f"with only the {keep} block connected, changing {key} {'did not change' if same else 'changed'} the logits"
        agent = build("meta_rnn", {"hidden": 5})


def test_meta_rnn_causality():
    """Logits of step t never depend on the label of step t or later; err_prev drives the next logits."""
    agent = build("meta_rnn", {"hidden": 8})
    x, y = random_stream(4, 6)
    y_alt = y.clone()
    y_alt[:, 3:] = (y[:, 3:] + 1) % N_CLASSES
    with torch.no_grad():
        a, _ = run_lifetime(agent, x, y)
        b, _ = run_lifetime(agent, x, y_alt)
    torch.testing.assert_close(a[:, :4], b[:, :4], atol=0, rtol=0)
    assert not torch.allclose(a[:, 4], b[:, 4])
    # err_prev alone (same x, same y_prev) changes the prediction
    state = agent.initial_state(4)
    obs = {"x": x[:, 0], "y_prev": nn.functional.one_hot(y[:, 0], N_CLASSES).float(), "err_prev": torch.zeros(4, N_CLASSES)}
    with torch.no_grad():
        l0, _ = agent.step(obs, state)
        l1, _ = agent.step({**obs, "err_prev": torch.full((4, N_CLASSES), 0.3)}, state)
    assert not torch.allclose(l0, l1)


def test_meta_rnn_named_configs_and_options():
    for name, hidden in (("lstm16", 16), ("lstm128", 128), ("meta_rnn", 128)):
        agent = make_agent(name, 27, 27)
        assert isinstance(agent, MetaRNN) and agent.hidden == hidden and agent.ticks == 1
    assert make_agent("lstm16", 3, 2, ticks=2).ticks == 2
    with pytest.raises(TypeError, match="valid options"):
        make_agent("lstm16", 3, 2, hiden=4)
    with pytest.raises(ValueError, match="hidden"):
        MetaRNN(3, 2, hidden=0)
    with pytest.raises(ValueError, match="ticks"):
        MetaRNN(3, 2, ticks=0)


def test_meta_rnn_learned_initial_state():
    agent = build("meta_rnn", {"hidden": 4, "learn_init": True})
    with torch.no_grad():
        agent.h0.fill_(0.5)
    state = agent.initial_state(3)
    assert state["h"].shape == (3, 4) and torch.all(state["h"] == 0.5) and torch.all(state["c"] == 0)
    plain = build("meta_rnn", {"hidden": 4})
    assert not any("h0" in n for n, _ in plain.named_parameters())


# ------------------------------------------------------------------------------ Hebbian


def tiny_hebbian(rule: str, post: str = "label") -> HebbianFastWeights:
    """x_dim 1, 2 classes: u = [x, err0, err1, y0, y1]; eta 0.5."""
    torch.manual_seed(0)
    return HebbianFastWeights(1, 2, rule=rule, post=post, eta_init=0.5)


F0 = torch.tensor([[0.2, 1.0], [0.0, -0.4], [0.6, 0.0], [-1.0, 0.8], [0.0, 0.0]])
PRE = torch.tensor([2.0, 0.5, -1.0, 0.0, 1.0])
OUT_PREV = torch.tensor([0.4, -0.2])


def hebbian_one_step(agent, y_prev, err_prev):
    state = {"F": F0[None].clone(), "pre": PRE[None].clone(), "out": OUT_PREV[None].clone()}
    obs = {"x": torch.tensor([[0.7]]), "y_prev": y_prev[None], "err_prev": err_prev[None]}
    with torch.no_grad():
        return agent.step(obs, state)


def test_hebbian_starts_empty():
    agent = build("hebbian", {})
    state = agent.initial_state(3)
    assert set(state) == set(agent.state_kinds) and agent.state_kinds["F"] == "weight"
    assert state["F"].shape == (3, X_DIM + 2 * N_CLASSES, N_CLASSES) and not state["F"].any()
    assert agent.state_kinds["pre"] == agent.state_kinds["out"] == "activation"


def test_hebb_rule_by_hand():
    """post = y_prev = [0, 1]: column 0 decays by (1 - eta); column 1 = 0.5 F0 + 0.5 pre, clipped."""
    agent = tiny_hebbian("hebb")
    _, state = hebbian_one_step(agent, torch.tensor([0.0, 1.0]), torch.tensor([0.3, -0.3]))
    want = torch.tensor([[0.1, 1.0], [0.0, 0.05], [0.3, -0.5], [-0.5, 0.4], [0.0, 0.5]])
    # column 1, row 0: 0.5 * 1.0 + 0.5 * 2.0 = 1.5 -> clipped to 1
    torch.testing.assert_close(state["F"][0], want)
    torch.testing.assert_close(state["pre"][0], torch.tensor([0.7, 0.3, -0.3, 0.0, 1.0]))
    unclipped = HebbianFastWeights(1, 2, rule="hebb", clip=False, eta_init=0.5)
    _, state = hebbian_one_step(unclipped, torch.tensor([0.0, 1.0]), torch.tensor([0.3, -0.3]))
    assert state["F"][0, 0, 1].item() == pytest.approx(1.5)


def test_oja_rule_by_hand():
    """F + eta post (pre - post F): with post = [0, 1] column 0 is untouched, column 1 moves halfway to pre."""
    agent = tiny_hebbian("oja")
    _, state = hebbian_one_step(agent, torch.tensor([0.0, 1.0]), torch.tensor([0.3, -0.3]))
    want = torch.tensor([[0.2, 1.5], [0.0, 0.05], [0.6, -0.5], [-1.0, 0.4], [0.0, 0.5]])
    torch.testing.assert_close(state["F"][0], want)
    # a non-binary post: post = 0.5 on column 1 -> F + 0.5 * 0.5 * (pre - 0.5 F)
    _, state = hebbian_one_step(agent, torch.tensor([0.0, 0.5]), torch.zeros(2))
    torch.testing.assert_close(state["F"][0, :, 1], F0[:, 1] + 0.25 * (PRE - 0.5 * F0[:, 1]))


def test_hebbian_corrected_post_uses_previous_output_minus_error():
    agent = tiny_hebbian("hebb", post="corrected")
    err = torch.tensor([0.3, -0.3])
    _, state = hebbian_one_step(agent, torch.tensor([0.0, 1.0]), err)
    post = OUT_PREV - err  # [0.1, 0.1]
    want = (0.5 * F0 + 0.5 * PRE[:, None] * post[None]).clamp(-1, 1)
    torch.testing.assert_close(state["F"][0], want)


def test_hebbian_output_uses_updated_fast_weights():
    agent = tiny_hebbian("hebb")
    with torch.no_grad():
        agent.alpha.normal_()
        agent.bias.normal_()
    logits, state = hebbian_one_step(agent, torch.tensor([0.0, 1.0]), torch.tensor([0.3, -0.3]))
    u = state["pre"][0]
    out = u @ (agent.w + agent.alpha * state["F"][0]) + agent.bias
    torch.testing.assert_close(logits[0], LOGIT_BOUND * torch.tanh(out / LOGIT_BOUND))
    torch.testing.assert_close(state["out"][0], out)


@pytest.mark.parametrize("rule", ["hebb", "oja"])
def test_hebbian_eta_zero_is_a_linear_layer(rule):
    agent = build("hebbian", {"rule": rule, "eta_init": 0.0})
    with torch.no_grad():
        agent.alpha.normal_()
    x, y = random_stream(3, 10)
    with torch.no_grad():
        logits, states = run_lifetime(agent, x, y)
    for t, state in enumerate(states):
        assert not state["F"].any()
        z = state["pre"] @ agent.w + agent.bias
        torch.testing.assert_close(logits[:, t], LOGIT_BOUND * torch.tanh(z / LOGIT_BOUND))


def test_hebbian_fast_weights_change_within_lifetime_and_reset():
    agent = build("hebbian", {"eta_init": 0.2})
    x, y = random_stream(2, 8)
    with torch.no_grad():
        _, states = run_lifetime(agent, x, y)
    assert not states[0]["F"].any()  # nothing to learn from at t = 0
    norms = [s["F"].norm().item() for s in states[1:]]
    assert all(n > 0 for n in norms) and len(set(norms)) == len(norms)
    assert not agent.initial_state(2)["F"].any()
    kept = reset_activations(agent, states[-1])
    assert torch.equal(kept["F"], states[-1]["F"]) and not kept["pre"].any() and not kept["out"].any()


def test_hebbian_options():
    assert make_agent("hebbian", 3, 2, eta_per_connection=True).eta.shape == (3 + 4, 2)
    assert make_agent("hebbian", 3, 2).eta.shape == ()
    with pytest.raises(ValueError, match="rule"):
        make_agent("hebbian", 3, 2, rule="bcm")
    with pytest.raises(ValueError, match="post"):
        make_agent("hebbian", 3, 2, post="output")


# ------------------------------------------------------------------------------ option checks


def test_one_int_hidden_is_one_hidden_layer():
    for name, extra in (("vsml", {"state_size": 2, "msg_size": 2}), ("tanh_backprop", {})):
        one = make_agent(name, 4, 3, hidden=32, **extra)
        assert one.sizes == make_agent(name, 4, 3, hidden=(32,), **extra).sizes == (4, 32, 3)
        assert make_agent(name, 4, 3, hidden=[5, 6], **extra).sizes == (4, 5, 6, 3)
        for bad in (0, "32", (4, 2.5), (4, True), 1.5):
            with pytest.raises(ValueError, match="hidden"):
                make_agent(name, 4, 3, hidden=bad, **extra)


@pytest.mark.parametrize("name", ["vsml", "tanh_backprop"])
def test_initial_state_rejects_a_bad_batch_size(name):
    agent = make_agent(name, 4, 3)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {bad!r}"):
            agent.initial_state(bad)
    assert agent.initial_state(2)  # a good one still works


def test_bad_numeric_options_get_clear_errors():
    with pytest.raises(ValueError, match="weight_bound must be a positive number, got 0"):
        make_agent("tanh_backprop", 4, 3, weight_bound=0.0)
    with pytest.raises(ValueError, match="weight_bound must be a positive number, got -1"):
        make_agent("tanh_backprop", 4, 3, weight_bound=-1.0)
    for eps in (0.0, -1e-8, math.nan, math.inf):
        with pytest.raises(ValueError, match="eps must be a positive number"):
            make_agent("adam", 4, 3, eps=eps)
    with pytest.raises(ValueError, match="betas must be a pair"):
        make_agent("adam", 4, 3, betas=(0.9,))
    for eta in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="eta_init must be a finite number"):
            make_agent("hebbian", 4, 3, eta_init=eta)
    assert float(make_agent("hebbian", 4, 3, eta_init=0.0).eta.detach()) == 0.0  # zero (no plasticity) is fine
    with pytest.raises(ValueError, match=r"clip_state must be positive or None, got 'a'"):
        make_agent("vsml", 4, 3, clip_state="a")
    for name in ("meta_rnn", "sgd", "vsml"):
        with pytest.raises(ValueError, match=r"x_dim must be an integer \(the number of input features\), got 2\.5"):
            make_agent(name, 2.5, 3)
        with pytest.raises(ValueError, match="n_classes must be an integer"):
            make_agent(name, 4, 3.0)
    import numpy as np

    assert make_agent("meta_rnn", np.int64(4), 3, hidden=8).x_dim == 4  # NumPy integers are integers
    # numbers that are bools or strings (True read as 1.0; "0.9" failed later with a TypeError)
    for name, option, bad in (("sgd", "lr", True), ("adam", "eps", True), ("adam", "betas", (False, 0.9)),
                              ("sgd", "momentum", "0.9"), ("sgd", "momentum", True)):
        with pytest.raises(ValueError, match=option):
            make_agent(name, 4, 3, **{option: bad})
    with pytest.raises(ValueError, match="separate_backward needs backward_pass"):
        make_agent("vsml", 4, 3, separate_backward=True)  # its parameters would never be used
    # yes/no options: a string such as "no" is an error, not True
    for name, option in (("hebbian", "clip"), ("hebbian", "eta_per_connection"), ("meta_rnn", "learn_init"),
                         ("tanh_backprop", "bound_updates"), ("vsml", "backward_pass"), ("vsml", "freeze_forward")):
        for bad in ("no", "false", 2, None):
            with pytest.raises(ValueError, match=f"{option} must be true or false"):
                make_agent(name, 4, 3, **{option: bad})
    assert make_agent("hebbian", 4, 3, clip=np.bool_(False)).clip is False
    assert make_agent("meta_rnn", 4, 3, hidden=8, learn_init=1).learn_init is True


def test_tanh_backprop_step_sizes_per_layer():
    """The step sizes backprop_net's docstring states: layer k's weights move lr * A_k * c_k times
    their gradient of the summed loss, its biases lr * c_k, with c_k the product of A_j / B_j
    over the layers above (A fan-in, B fan-out)."""
    from rulegym.agents.backprop_net import layer_backward, layer_forward

    sizes = (5, 3, 4, 2)
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(1, b, a, generator=g, dtype=torch.float64, requires_grad=True) for a, b in zip(sizes, sizes[1:])]
    bs = [torch.randn(1, b, generator=g, dtype=torch.float64, requires_grad=True) for b in sizes[1:]]
    a, inputs = torch.randn(1, sizes[0], generator=g, dtype=torch.float64), []
    for w, b in zip(ws, bs):
        inputs.append(a.detach())
        a = layer_forward(a, w, b)
    y = torch.tensor([1])
    nn.functional.cross_entropy(a, y, reduction="sum").backward()
    e = (a.softmax(-1) - nn.functional.one_hot(y, 2)).detach()
    lr, c = 0.1, 1.0
    for k in reversed(range(3)):
        e, w_new, b_new = layer_backward(inputs[k], e, ws[k].detach(), bs[k].detach(), lr)
        torch.testing.assert_close(ws[k].detach() - w_new, lr * sizes[k] * c * ws[k].grad)
        torch.testing.assert_close(bs[k].detach() - b_new, lr * c * bs[k].grad)
        c *= sizes[k] / sizes[k + 1]  # the hidden layers' weight steps are not lr * fan-in


# ------------------------------------------------------------------------------ nearest class mean


def test_class_means_by_hand():
    agent = build("class_means", {"temperature": 0.5}, x_dim=2, n_classes=3)
    state = agent.initial_state(1)
    onehot = torch.eye(3)
    no_label = torch.zeros(1, 3)
    xs = torch.tensor([[[0.0, 0.0]], [[2.0, 0.0]], [[0.0, 4.0]], [[1.0, 1.0]]])
    labels = [0, 0, 2]  # of the first three inputs; the fourth is only predicted
    logits = []
    for t, x in enumerate(xs):
        y = no_label if t == 0 else onehot[labels[t - 1]][None]
        out, state = agent.step({"x": x, "y_prev": y, "err_prev": torch.zeros(1, 3)}, state)
        logits.append(out[0])
    assert torch.equal(logits[0], torch.zeros(3))  # nothing seen yet
    # after x0 (class 0): mu_0 = (0, 0); x1 = (2, 0) -> -mean((2, 0)^2) / 0.5 = -4; class 1, 2 unseen -> the floor
    torch.testing.assert_close(logits[1], bound_logits(torch.tensor([-4.0, -4.0, -4.0])))
    # at the last step: mu_0 = (1, 0), mu_2 = (0, 4); x3 = (1, 1): d_0 = 0.5, d_2 = 5 -> logits -1, -10, class 1 at the floor -10
    torch.testing.assert_close(logits[3], bound_logits(torch.tensor([-1.0, -10.0, -10.0])))  # (softly bounded)
    assert state["counts"].tolist() == [[2.0, 0.0, 1.0]]
    # a step without a label adds nothing (e.g. after learning to remember's reset of activations)
    _, after = agent.step({"x": xs[0], "y_prev": no_label, "err_prev": torch.zeros(1, 3)}, state)
    assert torch.equal(after["sums"], state["sums"]) and torch.equal(after["counts"], state["counts"])
    with pytest.raises(ValueError, match="temperature"):
        build("class_means", {"temperature": 0.0})


def test_class_means_predicts_the_nearest_mean_on_a_stream():
    """Its predictions equal a plain per-lifetime nearest-class-mean computed from the whole past."""
    batch, steps = 4, 30
    xs, ys = random_stream(batch, steps, x_dim=6, n_classes=3, seed=1)
    agent = build("class_means", {}, x_dim=6, n_classes=3)
    state = agent.initial_state(batch)
    y_prev = torch.zeros(batch, 3)
    for t in range(steps):
        logits, state = agent.step({"x": xs[:, t], "y_prev": y_prev, "err_prev": torch.zeros(batch, 3)}, state)
        for i in range(batch):
            past_x, past_y = xs[i, :t], ys[i, :t]
            seen = [c for c in range(3) if (past_y == c).any()]
            if len(seen) < 2:
                continue
            dist = {c: ((xs[i, t] - past_x[past_y == c].mean(0)) ** 2).sum().item() for c in seen}
            assert logits[i].argmax().item() == min(dist, key=dist.get)
        y_prev = nn.functional.one_hot(ys[:, t], 3).float()


# ------------------------------------------------------------------------------ FWM


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def test_fwm_delta_rule_writes_and_replaces():
    g = torch.Generator().manual_seed(0)
    s = 5
    k1, k2 = unit(torch.randn(2, s, generator=g)), unit(torch.randn(2, s, generator=g))
    v = 0.4 * unit(torch.randn(2, s, generator=g))
    F = fwm_write(torch.zeros(2, s, s, s), k1, k2, v, torch.ones(2, 1))
    torch.testing.assert_close(fwm_lookup(F, k1, k2), v)
    # the delta rule replaces (not adds to) what the keys addressed
    v2 = -0.3 * unit(torch.randn(2, s, generator=g))
    F2 = fwm_write(F, k1, k2, v2, torch.ones(2, 1))
    torch.testing.assert_close(fwm_lookup(F2, k1, k2), v2)
    # half strength moves the stored value halfway
    F3 = fwm_write(F, k1, k2, v2, torch.full((2, 1), 0.5))
    torch.testing.assert_close(fwm_lookup(F3, k1, k2), 0.5 * (v + v2))
    # orthogonal addresses do not interfere
    e = torch.eye(s)
    a, b = 0.3 * unit(torch.randn(1, s, generator=g)), 0.3 * unit(torch.randn(1, s, generator=g))
    F4 = fwm_write(torch.zeros(1, s, s, s), e[None, 0], e[None, 1], a, torch.ones(1, 1))
    F4 = fwm_write(F4, e[None, 2], e[None, 1], b, torch.ones(1, 1))
    torch.testing.assert_close(fwm_lookup(F4, e[None, 0], e[None, 1]), a)
    torch.testing.assert_close(fwm_lookup(F4, e[None, 2], e[None, 1]), b)


def test_fwm_norm_bound_holds():
    g = torch.Generator().manual_seed(1)
    s = 4
    F = torch.zeros(3, s, s, s)
    for _ in range(200):
        k1, k2, v = (torch.tanh(3 * torch.randn(3, s, generator=g)) for _ in range(3))
        F = fwm_write(F, k1, k2, v, torch.rand(3, 1, generator=g))
        assert torch.all(F.flatten(1).norm(dim=1) <= 1 + 1e-5)
    # a big write is rescaled to norm exactly 1
    big = fwm_write(torch.zeros(1, s, s, s), torch.ones(1, s), torch.ones(1, s), torch.ones(1, s), torch.ones(1, 1))
    assert big.norm().item() == pytest.approx(1.0, abs=1e-5)
    # and inside the agent, with large inputs, over a whole lifetime
    agent = build("fwm", {"hidden": 8, "fw_size": 4, "n_reads": 2})
    x, y = random_stream(2, 40)
    with torch.no_grad():
        _, states = run_lifetime(agent, 5 * x, y)
    assert all(torch.all(st["F"].flatten(1).norm(dim=1) <= 1 + 1e-5) for st in states)
    assert states[-1]["F"].abs().sum() > 0


def test_fwm_shapes_and_state():
    agent = make_agent("fwm", 7, 5)
    assert (agent.hidden, agent.fw_size, agent.n_reads, agent.key_norm) == (128, 32, 3, "tanh")
    state = agent.initial_state(2)
    assert {k: tuple(v.shape) for k, v in state.items()} == {"h": (2, 128), "c": (2, 128), "F": (2, 32, 32, 32)}
    assert agent.state_kinds == {"h": "activation", "c": "activation", "F": "weight"}
    assert not state["F"].any()
    obs = {"x": torch.randn(2, 7), "y_prev": torch.zeros(2, 5), "err_prev": torch.zeros(2, 5)}
    logits, new = agent.step(obs, state)
    assert logits.shape == (2, 5) and new["F"].shape == (2, 32, 32, 32) and new["F"].abs().sum() > 0
    l2 = make_agent("fwm", 7, 5, key_norm="l2", fw_size=6)
    keys = l2._keys(torch.randn(4, 6))
    torch.testing.assert_close(keys.norm(dim=-1), torch.ones(4))
    with pytest.raises(ValueError, match="key_norm"):
        make_agent("fwm", 7, 5, key_norm="softmax")


def test_fwm_reads_after_writing():
    """The step's prediction uses the memory just written: logits = readout([h, n_Nr]) from the new F."""
    agent = build("fwm", {"hidden": 6, "fw_size": 3, "n_reads": 2})
    x, y = random_stream(2, 3)
    with torch.no_grad():
        _, states = run_lifetime(agent, x, y)
        obs = {"x": x[:, 2], "y_prev": torch.zeros(2, N_CLASSES), "err_prev": torch.zeros(2, N_CLASSES)}
        logits, new = agent.step(obs, states[1])
        q = agent.read(new["h"]).split(3, dim=-1)
        n = q[0]
        for e in q[1:]:
            n = nn.functional.layer_norm(torch.einsum("bijk,bi,bj->bk", new["F"], n, e), (3,))
        z = agent.readout(torch.cat([new["h"], n], -1))
    torch.testing.assert_close(logits, LOGIT_BOUND * torch.tanh(z / LOGIT_BOUND))


# ------------------------------------------------------------------------------ every agent


@pytest.mark.parametrize(("vid", "name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_gradients_reach_every_parameter(vid, name, options):
    agent = build(name, options)
    x, y = random_stream(3, 20, seed=5)
    logits, states = run_lifetime(agent, x, y)
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
    loss.backward()
    for pname, p in agent.named_parameters():
        assert p.grad is not None, f"{vid}: no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), f"{vid}: non-finite gradient on {pname}"
        assert p.grad.abs().sum() > 0, f"{vid}: zero gradient on {pname}"


@pytest.mark.parametrize(("vid", "name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_population_step_equals_loop(vid, name, options):
    agent = build(name, options)
    g = torch.Generator().manual_seed(7)
    base = {k: v.detach() for k, v in agent.named_parameters()}
    members = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(3)]
    params = stack_params(members)
    x, y = random_stream(2, 5, seed=8)

    def member_step(i):
        return lambda obs, state: torch.func.functional_call(agent, members[i], (obs, state))

    with torch.no_grad():
        # a learned initial state belongs to each member's parameters
        if "h0" in base:
            init = [{"h": m["h0"].expand(2, -1), "c": m["c0"].expand(2, -1)} for m in members]
        else:
            init = [agent.initial_state(2) for _ in members]
        loop = [run_lifetime(agent, x, y, state=init[i], step=member_step(i))[0] for i in range(3)]
        state = {k: torch.stack([s[k] for s in init]) for k in init[0]}
        y_prev = err_prev = torch.zeros(2, N_CLASSES)
        prev = None  # the population's logits of the previous step
        for t in range(5):
            # each member sees its own err_prev: pass per-member observations
            if t == 0:
                obs = {"x": x[:, 0], "y_prev": y_prev, "err_prev": err_prev}
                logits, state = population_step(agent, params, obs, state)
            else:
                onehot = nn.functional.one_hot(y[:, t - 1], N_CLASSES).float()
                obs = {
                    "x": x[:, t].expand(3, -1, -1),
                    "y_prev": onehot.expand(3, -1, -1),
                    "err_prev": prev.softmax(-1) - onehot,
                }
                logits, state = population_step(agent, params, obs, state, shared_obs=False)
            for i in range(3):
                torch.testing.assert_close(logits[i], loop[i][:, t], atol=1e-5, rtol=1e-5)
            prev = logits


@pytest.mark.parametrize(("vid", "name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_deterministic_bounded_float32(vid, name, options):
    x, y = random_stream(2, 12, seed=9)
    a, b = build(name, options, seed=11), build(name, options, seed=11)
    with torch.no_grad():
        la, sa = run_lifetime(a, x, y)
        lb, sb = run_lifetime(b, x, y)
        la2, _ = run_lifetime(a, x, y)
    assert torch.equal(la, lb) and torch.equal(la, la2)
    assert all(torch.equal(sa[-1][k], sb[-1][k]) for k in sa[-1])
    assert la.dtype == torch.float32 and all(v.dtype == torch.float32 for v in sa[-1].values())
    assert set(sa[-1]) == set(a.state_kinds)
    # logits stay inside the action box even for huge inputs
    with torch.no_grad():
        for p in a.parameters():
            p.mul_(50.0)
        huge, _ = run_lifetime(a, 1e3 * x, y)
    assert torch.isfinite(huge).all() and huge.abs().max() <= LOGIT_BOUND


@pytest.mark.parametrize(("vid", "name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_any_sizes_and_unflattened_x(vid, name, options):
    agent = build(name, options, x_dim=12, n_classes=2)
    state = agent.initial_state(3)
    obs = {"x": torch.randn(3, 3, 4), "y_prev": torch.zeros(3, 2), "err_prev": torch.zeros(3, 2)}
    logits, _ = agent.step(obs, state)
    assert logits.shape == (3, 2)
    with pytest.raises(ValueError, match="x_dim=12"):
        agent.step({**obs, "x": torch.randn(3, 5)}, state)


@pytest.mark.parametrize(("vid", "name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_state_follows_the_parameters_device(vid, name, options):
    """No hard-coded device: on the shape-only "meta" device every state entry and logit stays there."""
    agent = build(name, options).to("meta")
    state = agent.initial_state(2)
    obs = {k: torch.empty(2, d, device="meta") for k, d in (("x", X_DIM), ("y_prev", N_CLASSES), ("err_prev", N_CLASSES))}
    logits, new = agent(obs, state)  # unchecked step: validation would read values
    assert logits.device.type == "meta" and logits.shape == (2, N_CLASSES)
    assert all(v.device.type == "meta" for v in [*state.values(), *new.values()])


# ------------------------------------------------------------------------------ it learns


def memorisation_stream(batch: int, steps: int, n_items: int, n_classes: int, g: torch.Generator):
    """Per lifetime: n_items fixed one-hot inputs with fresh random labels, shown in shuffled passes."""
    labels = torch.randint(n_classes, (batch, n_items), generator=g)
    passes = math.ceil(steps / n_items)
    order = torch.cat([torch.argsort(torch.rand(batch, n_items, generator=g), 1) for _ in range(passes)], 1)[:, :steps]
    return nn.functional.one_hot(order, n_items).float(), labels.gather(1, order)


def test_meta_rnn_learns_to_memorise_by_bptt(one_thread):
    """Labels are new in every lifetime, so only learning within the lifetime beats chance (1/3).

    Runs on one thread: its matmuls are tiny, and two OpenMP threads spin-waiting on a busy
    2-core machine made this test 15x slower.
    """
    _train_and_check_memorisation()


def _train_and_check_memorisation():
    torch.manual_seed(0)
    agent = make_agent("meta_rnn", 3, 3, hidden=32)
    opt = torch.optim.Adam(agent.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(150):
        x, y = memorisation_stream(32, 30, 3, 3, g)
        logits, _ = run_lifetime(agent, x, y)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    held_out = torch.Generator().manual_seed(123)
    x, y = memorisation_stream(256, 30, 3, 3, held_out)
    with torch.no_grad():
        logits, _ = run_lifetime(agent, x, y)
    correct = (logits.argmax(-1) == y).float()
    first_pass, late = correct[:, :3].mean().item(), correct[:, 15:].mean().item()
    assert late > 0.6, f"accuracy on steps 15-29 of held-out lifetimes is {late:.2f} (chance 0.33)"
    assert first_pass < 0.5, f"accuracy before any label was seen should be near chance, got {first_pass:.2f}"

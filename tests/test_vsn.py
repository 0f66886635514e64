"""The vector-synapse network (Gregor 2020): update networks, equations, protocol, vmap, errors.

The vectorised agent is checked against a reference that follows the documented equations
neuron by neuron and synapse by synapse (Python loops), for every OP on both io layouts; the
synapse effect, integration and the prediction layer's write-back are also checked on a
two-neuron case computed by hand.
"""

from __future__ import annotations

import math
import os

import gymnasium as gym
import pytest
import torch
from torch import nn

from rulegym.agents import make_agent, population_step, reset_activations, stack_params
from rulegym.agents.vsn import OPS, UpdateOp, VectorSynapseNet, canonical_op
from rulegym.envs.protocol import LOGIT_BOUND

torch.set_num_threads(2)


def tiny(x_dim=3, n_classes=2, seed=0, **opts) -> VectorSynapseNet:
    torch.manual_seed(seed)
    base = dict(state_size=3, hidden_layers=1, neurons=2, op_hidden=5, embed_dim=2)
    return make_agent("vsn", x_dim, n_classes, **{**base, **opts})


def random_obs(agent, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = agent.n_classes
    y = torch.randint(c, (batch,), generator=g)
    y_prev = nn.functional.one_hot(y, c).float()
    p = torch.softmax(torch.randn(batch, c, generator=g), -1)
    return {"x": torch.randn(batch, agent.x_dim, generator=g), "y_prev": y_prev, "err_prev": p - y_prev}


def play(agent, xs, ys, state=None, step=None):
    """The online protocol as the envs play it: err_prev = softmax(logits) - onehot(label)."""
    steps, batch = ys.shape
    c = agent.n_classes
    step = step or agent.step
    state = agent.initial_state(batch, torch.Generator().manual_seed(1)) if state is None else state
    y_prev = err_prev = torch.zeros(batch, c)
    out = []
    for t in range(steps):
        logits, state = step({"x": xs[t], "y_prev": y_prev, "err_prev": err_prev}, state)
        out.append(logits)
        y_prev = nn.functional.one_hot(ys[t], c).float()
        err_prev = logits.softmax(-1).detach() - y_prev
    return torch.stack(out), state


# ------------------------------------------------------------------ update networks


@pytest.mark.parametrize("kind", OPS)
@pytest.mark.parametrize("role", ["h", "w"])
def test_update_op_shapes_and_definition(kind, role):
    torch.manual_seed(0)
    n, d = 4, 3
    op = UpdateOp(kind, role, n, d, hidden=7)
    s, x = torch.randn(5, 2, n), torch.randn(5, 2, d)
    c = torch.randn(5, 2, n) if op.has_cell else None
    hebb = torch.randn(5, 2, n)
    s_new, c_new = op(s, x, c, hebb)
    assert s_new.shape == s.shape and (c_new is None) == (kind not in ("lstm", "lstm_sigmoid", "lstm_id"))
    z = torch.cat([s, x], -1) @ op.first.weight.T + op.first.bias
    if op.has_cell:
        assert c_new.shape == s.shape
        i, f, g, o = z.chunk(4, -1)
        c_want = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        squash = {"lstm": torch.tanh, "lstm_sigmoid": torch.sigmoid, "lstm_id": lambda v: v}[kind]
        torch.testing.assert_close(c_new, c_want)
        torch.testing.assert_close(s_new, torch.sigmoid(o) * squash(c_want))
        return
    out = torch.tanh(z) @ op.out.weight.T + op.out.bias
    if kind == "gated":
        a, b = out.chunk(2, -1)
        g = torch.sigmoid(a)
        torch.testing.assert_close(s_new, (1 - g) * s + g * (torch.tanh(b) + hebb))
    elif kind == "mlp_tanh":
        torch.testing.assert_close(s_new, torch.tanh(out))
    else:  # MLP: sigmoid output for neurons, linear for synapses
        torch.testing.assert_close(s_new, torch.sigmoid(out) if role == "h" else out)
        if role == "h":
            assert ((s_new > 0) & (s_new < 1)).all()


def test_gated_state_semantics():
    """Gate closed keeps the state exactly; gate open with r = 0 writes the Hebbian term."""
    op = UpdateOp("gated", "w", 3, 2, hidden=4)
    s, x, hebb = torch.randn(6, 3), torch.randn(6, 2), torch.randn(6, 3)
    with torch.no_grad():
        op.out.weight.zero_()
        op.out.bias[:3] = -1e4
        op.out.bias[3:] = 0.0
    torch.testing.assert_close(op(s, x, None, hebb)[0], s, atol=0, rtol=0)
    with torch.no_grad():
        op.out.bias[:3] = 1e4
    torch.testing.assert_close(op(s, x, None, hebb)[0], hebb, atol=0, rtol=0)
    assert op.out.bias.shape == (6,)
    # default init: the gate starts mostly closed (state kept)
    assert torch.all(UpdateOp("gated", "h", 3, 2, 4).out.bias[:3] < 0)


def test_op_names_and_aliases():
    assert canonical_op("MLP-tanh") == "mlp_tanh"
    assert canonical_op("LSTM-σ") == "lstm_sigmoid"
    assert canonical_op("LSTM-id") == "lstm_id"
    assert canonical_op(" GATED ") == "gated"
    agent = tiny(op_h="LSTM-σ", op_w="MLP")
    assert agent.op_h.kind == "lstm_sigmoid" and agent.op_w.kind == "mlp"


# ------------------------------------------------------------------ state


@pytest.mark.parametrize("op_h,op_w", [("mlp", "lstm"), ("lstm_id", "gated"), ("gated", "mlp_tanh")])
def test_state_entries_and_kinds(op_h, op_w):
    agent = tiny(x_dim=3, n_classes=2, op_h=op_h, op_w=op_w, hidden_layers=2, neurons=2)
    s = agent.initial_state(4, torch.Generator().manual_seed(0))
    N = 3 + 2 + 2 + 2
    assert s["h"].shape == (4, N, 3) and not s["h"].any()
    assert agent.state_kinds["h"] == "activation"
    assert ("c_h" in s) == op_h.startswith("lstm")
    if "c_h" in s:
        assert s["c_h"].shape == (4, 4, 3) and agent.state_kinds["c_h"] == "activation"
    for name, rows in (("hid1", 2), ("hid2", 2), ("out", 2)):
        assert s[f"w_{name}"].shape == (4, rows, N, 3) and agent.state_kinds[f"w_{name}"] == "weight"
        assert (f"cw_{name}" in s) == op_w.startswith("lstm")
        if f"cw_{name}" in s:
            assert agent.state_kinds[f"cw_{name}"] == "weight" and not s[f"cw_{name}"].any()
    assert "w_in" not in s, "sensor neurons are clamped and receive no synapses"
    assert set(s) == set(agent.state_kinds)


def test_synapse_init_per_lifetime():
    agent = VectorSynapseNet(27, 27, io="tied", neurons=40, state_size=6)
    a = agent.initial_state(64, torch.Generator().manual_seed(0))
    b = agent.initial_state(64, torch.Generator().manual_seed(0))
    c = agent.initial_state(64, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a["w_hid1"], b["w_hid1"], atol=0, rtol=0)
    assert not torch.allclose(a["w_hid1"], c["w_hid1"])
    assert not torch.allclose(a["w_hid1"][0], a["w_hid1"][1]), "every lifetime draws its own synapses"
    w = torch.cat([a["w_io"], a["w_hid1"]], 1)
    assert abs(w.var().item() * agent.n_total - 1.0) < 0.05, "each component ~ N(0, 1/fan_in)"
    assert abs(w.mean().item()) < 0.01


def test_reset_activations_keeps_synapses():
    agent = tiny(op_h="lstm", op_w="lstm")
    xs, ys = torch.randn(3, 2, 3), torch.randint(2, (3, 2))
    with torch.no_grad():
        _, s = play(agent, xs, ys)
    r = reset_activations(agent, s)
    assert not r["h"].any() and not r["c_h"].any()
    for k in ("w_hid1", "w_out", "cw_hid1", "cw_out"):
        assert r[k] is s[k]


# ------------------------------------------------------------------ equations


def reference_step(agent: VectorSynapseNet, obs, state):
    """The documented step, one neuron and one synapse at a time (slow, obviously right)."""
    n, layers, emb = agent.state_size, agent.layers, agent.embed
    typ = [k for k, (_, size, _) in enumerate(layers) for _ in range(size)]
    N = len(typ)
    gated = agent.op_w.kind == "gated"
    B = obs["x"].shape[0]
    logits_all, new_all = [], []

    def syn(w, cw, hi, hj, ti, tj):
        u = w * hj[0]
        x = torch.cat([hi, hj, u, hi * hj[1], emb[ti], emb[tj]])
        return agent.op_w(w, x, cw, hi * hj[1] if gated else None)

    for b in range(B):
        h_old = [state["h"][b, i] for i in range(N)]
        h = list(h_old)
        new = {}
        P = agent.predict_layer
        lo, hi_ = agent.slices[P]
        for i in range(lo, hi_):
            k = i - lo
            first = obs["x"][b, k] if agent.io == "tied" else obs["y_prev"][b, k]
            h[i] = torch.cat([first[None], h_old[i][1 : n - 1], -obs["err_prev"][b, k][None]])

        def update_layer_synapses(name, post, pre):
            l0, l1 = agent.slices[name]
            rows, crows = [], []
            for i in range(l0, l1):
                cols, ccols = [], []
                for j in range(N):
                    cw = state[f"cw_{name}"][b, i - l0, j] if agent.op_w.has_cell else None
                    w_new, c_new = syn(state[f"w_{name}"][b, i - l0, j], cw, post[i], pre[j], typ[i], typ[j])
                    cols.append(w_new)
                    ccols.append(c_new)
                rows.append(torch.stack(cols))
                if agent.op_w.has_cell:
                    crows.append(torch.stack(ccols))
            new[f"w_{name}"] = torch.stack(rows)
            if agent.op_w.has_cell:
                new[f"cw_{name}"] = torch.stack(crows)

        update_layer_synapses(P, h, h_old)
        if agent.io == "separate":
            l0, l1 = agent.slices["in"]
            for i in range(l0, l1):
                xi = obs["x"][b, i - l0]
                h[i] = torch.cat([xi[None], xi[None], torch.zeros(n - 2)])
        c_new_all = []
        for k, name in enumerate(agent.hidden_names):
            pre = list(h)
            l0, l1 = agent.slices[name]
            for i in range(l0, l1):
                u = sum(state[f"w_{name}"][b, i - l0, j] * pre[j][0] for j in range(N))
                c = state["c_h"][b, k * agent.neurons + i - l0] if "c_h" in state else None
                h[i], c2 = agent.op_h(pre[i], torch.cat([u, emb[typ[i]]]), c)
                c_new_all.append(c2)
            update_layer_synapses(name, h, pre)
        pre = list(h)
        vs = []
        for i in range(lo, hi_):
            u = sum(new[f"w_{P}"][i - lo, j] * pre[j][0] for j in range(N))
            vs.append(agent.readout(torch.cat([h[i], u, emb[typ[i]]])))
        v = torch.stack(vs)
        sm = torch.softmax(v, 0)
        for i in range(lo, hi_):
            h[i] = torch.cat([h[i][:1], sm[i - lo, 1 : n - 1], h[i][-1:]])
        new["h"] = torch.stack(h)
        if "c_h" in state:
            new["c_h"] = torch.stack(c_new_all)
        logits_all.append(LOGIT_BOUND * torch.tanh(v[:, 0] / LOGIT_BOUND))
        new_all.append(new)
    return torch.stack(logits_all), {k: torch.stack([s[k] for s in new_all]) for k in new_all[0]}


REF_CASES = [
    ("separate", "gated", "gated", 1),
    ("separate", "mlp", "mlp", 2),
    ("separate", "lstm", "lstm_id", 1),
    ("tied", "mlp_tanh", "lstm_sigmoid", 1),
    ("tied", "lstm_sigmoid", "mlp_tanh", 0),
    ("tied", "lstm_id", "lstm", 1),
    ("tied", "gated", "gated", 2),
]


@pytest.mark.parametrize("io,op_h,op_w,layers", REF_CASES)
def test_vectorised_step_equals_reference(io, op_h, op_w, layers):
    x_dim = 2 if io == "tied" else 3
    agent = tiny(x_dim=x_dim, n_classes=2, io=io, op_h=op_h, op_w=op_w, hidden_layers=layers, state_size=4 if layers == 2 else 3)
    g = torch.Generator().manual_seed(5)
    state = agent.initial_state(2, g)
    state = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in state.items()}  # nonzero activations and cells
    for t in range(2):
        obs = random_obs(agent, 2, seed=t)
        with torch.no_grad():
            got_l, got_s = agent.step(obs, state)
            want_l, want_s = reference_step(agent, obs, state)
        torch.testing.assert_close(got_l, want_l, atol=1e-5, rtol=1e-4)
        assert set(got_s) == set(want_s) == set(agent.state_kinds)
        for k in got_s:
            torch.testing.assert_close(got_s[k], want_s[k], atol=1e-5, rtol=1e-4, msg=lambda m: f"{k}: {m}")
        state = got_s


def two_neuron_agent(gate_bias: float) -> VectorSynapseNet:
    """Tied layout, 2 symbols, no hidden layer: two neurons and four synapses, state size 3.

    OP_w's output is zeroed so its gate is fixed by ``gate_bias`` and r = tanh(0) = 0; the
    readout is v = tanh(u) (identity first layer on u, identity second layer)."""
    agent = VectorSynapseNet(2, 2, state_size=3, hidden_layers=0, op_h="gated", op_w="gated", op_hidden=3, embed_dim=1, io="tied")
    with torch.no_grad():
        agent.op_w.out.weight.zero_()
        agent.op_w.out.bias[:3] = gate_bias
        agent.op_w.out.bias[3:] = 0.0
        first, second = agent.readout[0], agent.readout[2]
        first.weight.zero_()
        first.bias.zero_()
        first.weight[:, 3:6] = torch.eye(3)  # columns [h (3), u (3), e (1)]
        second.weight.copy_(torch.eye(3))
        second.bias.zero_()
    return agent


H_OLD = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.4, -0.2]])
W_IO = torch.tensor([[[0.1, -0.2, 0.3], [0.4, 0.5, -0.6]], [[-0.7, 0.8, 0.9], [0.2, -0.1, 0.05]]])
OBS2 = {"x": torch.tensor([[0.0, 1.0]]), "y_prev": torch.tensor([[0.0, 1.0]]), "err_prev": torch.tensor([[0.25, -0.25]])}


def test_two_neurons_by_hand_effect_integration_prediction_writeback():
    agent = two_neuron_agent(gate_bias=-1e4)  # gate closed: synapses keep their state
    state = {"h": H_OLD[None].clone(), "w_io": W_IO[None].clone()}
    with torch.no_grad():
        logits, new = agent.step(OBS2, state)
    torch.testing.assert_close(new["w_io"][0], W_IO, atol=0, rtol=0)
    # write-back: h_i = (x_i, h_i^1, y_i - p_i) = (x_i, h_i^1, -err_i); then h^0 = (0, 1), so
    # u_i = sum_j w_ij * h_j^0 = w_i1 (component-wise), v_i = tanh(u_i), logits = v^0 (bounded)
    u = W_IO[:, 1, :]
    v = torch.tanh(u)
    want_logits = [100 * math.tanh(math.tanh(u[i, 0].item()) / 100) for i in range(2)]
    torch.testing.assert_close(logits[0], torch.tensor(want_logits), atol=1e-6, rtol=1e-6)
    # the middle component becomes the softmax of v^1 over the two neurons
    e0, e1 = math.exp(v[0, 1].item()), math.exp(v[1, 1].item())
    want_h = torch.tensor([[0.0, e0 / (e0 + e1), -0.25], [1.0, e1 / (e0 + e1), 0.25]])
    torch.testing.assert_close(new["h"][0], want_h, atol=1e-6, rtol=1e-6)


def test_two_neurons_by_hand_hebbian_synapse_update():
    """Gate open, r = 0: w_ij <- h_i (written-back post) * h_j^1 (pre activity that predicted)."""
    agent = two_neuron_agent(gate_bias=1e4)
    state = {"h": H_OLD[None].clone(), "w_io": W_IO[None].clone()}
    with torch.no_grad():
        logits, new = agent.step(OBS2, state)
    post = torch.tensor([[0.0, 0.2, -0.25], [1.0, 0.4, 0.25]])
    want = post[:, None, :] * H_OLD[None, :, 1:2]  # [i, j, a] = post_i^a * h_old_j^1
    torch.testing.assert_close(new["w_io"][0], want, atol=1e-7, rtol=1e-6)
    # and the prediction integrates the *updated* synapses: u_i = w_new_i1 (h^0 = x = (0, 1))
    torch.testing.assert_close(logits[0], 100 * torch.tanh(torch.tanh(want[:, 1, 0]) / 100), atol=1e-6, rtol=1e-6)


def test_separate_layout_sensor_and_label_writeback():
    agent = make_agent("vsn", 1, 2, state_size=3, hidden_layers=0, op_hidden=4, embed_dim=2)
    assert [name for name, _, _ in agent.layers] == ["in", "out"]
    obs = {"x": torch.tensor([[0.7]]), "y_prev": torch.tensor([[1.0, 0.0]]), "err_prev": torch.tensor([[-0.4, 0.4]])}
    with torch.no_grad():
        _, s = agent.step(obs, agent.initial_state(1))
    torch.testing.assert_close(s["h"][0, 0], torch.tensor([0.7, 0.7, 0.0]))  # sensor (x, x, 0)
    torch.testing.assert_close(s["h"][0, 1:, 0], torch.tensor([1.0, 0.0]))  # label in component 0
    torch.testing.assert_close(s["h"][0, 1:, 2], torch.tensor([0.4, -0.4]))  # y - p in the last
    torch.testing.assert_close(s["h"][0, 1:, 1].sum(), torch.tensor(1.0))  # softmax over the layer


# ------------------------------------------------------------------ protocol, gradients, vmap


def test_causality_learns_before_predicting():
    agent = tiny(op_h="lstm", op_w="gated")
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(6, 3, 3, generator=g), torch.randint(2, (6, 3), generator=g)
    ys_alt = ys.clone()
    ys_alt[3:] = 1 - ys[3:]
    with torch.no_grad():
        a, _ = play(agent, xs, ys)
        b, _ = play(agent, xs, ys_alt)
    torch.testing.assert_close(a[:4], b[:4], atol=0, rtol=0)  # logits of step t never see y_t
    assert not torch.allclose(a[4], b[4])  # ... but do see y_{t-1} and its error


@pytest.mark.parametrize("op_h,op_w", [("gated", "gated"), ("lstm", "mlp"), ("mlp_tanh", "lstm_id")])
def test_gradients_reach_update_networks_and_embeddings(op_h, op_w):
    agent = tiny(op_h=op_h, op_w=op_w)
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(4, 2, 3, generator=g), torch.randint(2, (4, 2), generator=g)
    logits, _ = play(agent, xs, ys)
    nn.functional.cross_entropy(logits.flatten(0, 1), ys.flatten()).backward()
    for name, p in agent.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    assert (agent.embed.grad.abs().sum(1) > 0).all(), "every neuron type's embedding gets a gradient"


def test_population_step_equals_loop():
    agents = [tiny(op_h="lstm", op_w="gated", seed=s) for s in range(3)]
    agent = agents[0]
    params = stack_params([dict(a.named_parameters()) for a in agents])
    params = {k: v.detach() for k, v in params.items()}
    st = [a.initial_state(2, torch.Generator().manual_seed(i)) for i, a in enumerate(agents)]
    pop_state = {k: torch.stack([s[k] for s in st]) for k in st[0]}
    obs = random_obs(agent, 2)
    with torch.no_grad():
        pop_logits, pop_new = population_step(agent, params, obs, pop_state)
        for i, a in enumerate(agents):
            l, s = a.step(obs, st[i])
            torch.testing.assert_close(pop_logits[i], l, atol=1e-5, rtol=1e-5)
            for k in s:
                torch.testing.assert_close(pop_new[k][i], s[k], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ envs and options


def test_runs_on_an_image_stream_through_the_loop():
    from rulegym.train.loop import env_dims, run_lifetime

    import rulegym.envs  # noqa: F401

    env = gym.make_vec("rulegym/Digits-v0", num_envs=2, lifetime_length=6)
    try:
        x_dim, n_classes = env_dims(env)
        agent = make_agent("vsn", x_dim, n_classes, neurons=4, op_hidden=8)
        assert agent.io == "separate" and agent.n_total == 64 + 4 + 10
        res = run_lifetime(agent, env, seed=0, grad=True)
        res.mean_loss().backward()
        assert res.loss.shape == (6, 2) and torch.isfinite(res.loss).all()
        assert agent.op_w.first.weight.grad.abs().sum() > 0
    finally:
        env.close()


@pytest.mark.skipif(not os.environ.get("RULEGYM_DATA"), reason="needs RULEGYM_DATA for the Wizard of Oz text")
def test_runs_on_the_char_stream_tied():
    from rulegym.train.loop import evaluate

    agent = make_agent("vsn", 27, 27, io="tied", neurons=4, op_hidden=8)
    res = evaluate(agent, "rulegym/WizardOfOz-v0", num_envs=2, seed=0, steps=5)
    assert res.loss.shape == (5, 2) and math.isfinite(float(res.mean_loss()))


def test_bad_options_have_clear_errors():
    with pytest.raises(ValueError, match="valid update networks"):
        make_agent("vsn", 3, 2, op_h="transformer")
    with pytest.raises(ValueError, match="op_w"):
        make_agent("vsn", 3, 2, op_w="nope")
    with pytest.raises(TypeError, match="op_h must be a string"):
        make_agent("vsn", 3, 2, op_h=3)
    with pytest.raises(ValueError, match="state_size must be >= 2"):
        make_agent("vsn", 3, 2, state_size=1)
    with pytest.raises(ValueError, match="state_size must be a positive integer"):
        make_agent("vsn", 3, 2, state_size=2.5)
    with pytest.raises(ValueError, match="x_dim == n_classes"):
        make_agent("vsn", 3, 2, io="tied")
    with pytest.raises(ValueError, match="io must be one of"):
        make_agent("vsn", 3, 2, io="both")
    with pytest.raises(ValueError, match="hidden_layers"):
        make_agent("vsn", 3, 2, hidden_layers=-1)
    with pytest.raises(ValueError, match="neurons"):
        make_agent("vsn", 3, 2, neurons=0)
    with pytest.raises(TypeError, match="valid options"):
        make_agent("vsn", 3, 2, state=6)
    agent = tiny()
    with pytest.raises(ValueError, match="x_dim=3"):
        agent.step({"x": torch.zeros(1, 4), "y_prev": torch.zeros(1, 2), "err_prev": torch.zeros(1, 2)}, agent.initial_state(1))

"""Learning-algorithm cloning: the backprop targets, the exact reference agent, the curriculum."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from rulegym.agents import make_agent
from rulegym.learners.cloning import (
    CLONED_OPTIONS,
    _update_error,
    cloned_options,
    deployed_states,
    STAGES,
    CloningConfig,
    StateBuffer,
    _inputs,
    backprop_targets,
    chain_drift,
    check_cloned,
    initial_clone,
    cloning_error_grid,
    main,
    make_cloned_vsml,
    plot_error_grid,
    train_cloning,
)


def test_targets_on_a_hand_checked_connection():
    x, w, b, e, eta = 0.5, 2.0, 0.1, 0.3, 0.1
    t = backprop_targets(torch.tensor([[x]]), torch.tensor([[e]]), torch.tensor([[[w]]]), torch.tensor([[b]]), eta)
    tanh = math.tanh(x)
    assert t["y"].item() == pytest.approx(tanh * w + b)  # 1.02423...
    assert t["delta"].item() == pytest.approx(e * w * (1 - tanh**2))  # 0.47187...
    assert t["w_new"].item() == pytest.approx(w - eta * tanh * e)  # 1.98614...
    assert t["b_new"].item() == pytest.approx(b - eta * e)  # 0.07
    assert t["y"].item() == pytest.approx(1.0242343, abs=1e-6)
    assert t["delta"].item() == pytest.approx(0.4718689, abs=1e-6)


def test_bounded_targets_stop_at_the_range_a_state_holds():
    """With bound_updates the stages' targets are exact backprop projected onto +-0.99 scale."""
    from rulegym.learners.cloning import _exact_update, target_bound

    assert target_bound(CloningConfig()) is None
    assert target_bound(CloningConfig(bound_updates=True, weight_scale=4.0)) == pytest.approx(3.96)
    # a hand-checked connection at the edge: w = 3.9 steps past 3.96, b = -3.9 past -3.96
    x, e, eta = torch.tensor([[1.0]]), torch.tensor([[-0.5]]), 0.3
    w, b = torch.tensor([[[3.9]]]), torch.tensor([[-3.9]])
    free = backprop_targets(x, e, w, b, eta)
    t = backprop_targets(x, e, w, b, eta, bound=3.96)
    assert free["w_new"].item() == pytest.approx(3.9 + 0.15 * math.tanh(1.0)) and free["b_new"].item() == pytest.approx(-3.75)
    assert t["w_new"].item() == pytest.approx(3.96) and t["b_new"].item() == pytest.approx(-3.75)
    assert t["y"].item() == free["y"].item() and t["delta"].item() == free["delta"].item()
    # the stages' draws use the config's bound: the same draw, clipped
    w, b = torch.full((4096, 1), 3.9), torch.full((4096, 1), -3.9)
    _, _, unbounded = _exact_update(CloningConfig(), torch.Generator().manual_seed(1), w, b)
    _, _, bounded = _exact_update(CloningConfig(bound_updates=True), torch.Generator().manual_seed(1), w, b)
    assert unbounded["w_new"].abs().max() > 3.96 and bounded["w_new"].abs().max() <= 3.96 + 1e-6
    torch.testing.assert_close(bounded["w_new"], unbounded["w_new"].clamp(-3.96, 3.96))


def test_targets_are_backprop_of_the_mean_network():
    """With L = sum_b e_b y_b: the update is w - eta * fan_in * dL/dw, delta = dL/dx * fan_in / fan_out."""
    g = torch.Generator().manual_seed(0)
    s, a, b_out, eta = 3, 5, 4, 0.2
    x = torch.randn(s, a, generator=g, dtype=torch.float64).requires_grad_()
    w = torch.randn(s, b_out, a, generator=g, dtype=torch.float64).requires_grad_()
    bias = torch.randn(s, b_out, generator=g, dtype=torch.float64).requires_grad_()
    e = torch.randn(s, b_out, generator=g, dtype=torch.float64)
    y = torch.einsum("sba,sa->sb", w, torch.tanh(x)) / a + bias
    gx, gw, gb = torch.autograd.grad((e * y).sum(), (x, w, bias))
    t = backprop_targets(x.detach(), e, w.detach(), bias.detach(), eta)
    torch.testing.assert_close(t["y"], y.detach())
    torch.testing.assert_close(t["w_new"], w.detach() - eta * a * gw)
    torch.testing.assert_close(t["b_new"], bias.detach() - eta * gb)
    torch.testing.assert_close(t["delta"], gx * a / b_out)


def test_reference_agent_runs_the_targets_layer_by_layer():
    """tanh_backprop's step = backprop_targets composed over a two-layer network."""
    torch.manual_seed(0)
    agent = make_agent("tanh_backprop", 6, 3, hidden=(4,), lr=0.2)
    g = torch.Generator().manual_seed(1)
    state = agent.initial_state(2, g)
    x0 = torch.randn(2, 6, generator=g)
    zeros = torch.zeros(2, 3)
    with torch.no_grad():
        _, state = agent.step({"x": x0, "y_prev": zeros, "err_prev": zeros}, state)
        e = torch.randn(2, 3, generator=g) * 0.3
        x1 = torch.randn(2, 6, generator=g)
        logits, new = agent.step({"x": x1, "y_prev": zeros, "err_prev": e}, state)
    h = backprop_targets(x0, torch.zeros(2, 4), state["w0"], state["b0"], 0.2)["y"]
    top = backprop_targets(h, e, state["w1"], state["b1"], 0.2)
    low = backprop_targets(x0, top["delta"], state["w0"], state["b0"], 0.2)
    torch.testing.assert_close(new["w1"], top["w_new"])
    torch.testing.assert_close(new["b1"], top["b_new"])
    torch.testing.assert_close(new["w0"], low["w_new"])
    torch.testing.assert_close(new["b0"], low["b_new"])
    h1 = backprop_targets(x1, torch.zeros(2, 4), new["w0"], new["b0"], 0.2)["y"]
    y1 = backprop_targets(h1, torch.zeros(2, 3), new["w1"], new["b1"], 0.2)["y"]
    torch.testing.assert_close(logits, y1, rtol=1e-4, atol=1e-5)  # bound_logits ~ identity here


def test_frozen_forward_pass_keeps_the_state_and_ignores_errors():
    torch.manual_seed(0)
    agent = make_agent("vsml", 5, 3, freeze_forward=True, init_weight_std=1.0)
    g = torch.Generator().manual_seed(0)
    state = agent.initial_state(2, g)
    w, b = agent.decode_weights(state, 0)
    assert w.shape == (2, 3, 5) and torch.equal(b, torch.zeros(2, 3))
    assert w.abs().max() <= 0.99 * agent.weight_scale + 1e-6 and w.std() > 0.5
    x = torch.randn(2, 5, generator=g)
    outs = []
    for err in (torch.zeros(2, 3), torch.randn(2, 3, generator=g)):
        with torch.no_grad():
            logits, new = agent.step({"x": x, "y_prev": torch.zeros(2, 3), "err_prev": err}, state)
        assert all(torch.equal(new[k], state[k]) for k in state)
        outs.append(logits)
    torch.testing.assert_close(outs[0], outs[1])


def test_state_buffer_wraps_and_drops_non_finite_states():
    config = CloningConfig(buffer_size=8, state_size=4)
    buf = StateBuffer(config, torch.Generator().manual_seed(0))
    assert buf.data.shape == (8, 2, 4)
    assert (buf.data.abs() <= 0.99).all() and torch.equal(buf.data[:, 0], buf.data[:, 1])
    assert (buf.data[:, :, :2] == buf.data[:, :, :1]).all() and (buf.data[:, :, 3:] == 0).all()  # 2 weight, 1 bias slot
    h = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    buf.push(h, h)
    buf.push(h + 100, h)
    assert buf.pos == 4
    h_bad = torch.full((2, 4), float("nan"))
    buf.push(h_bad, h_bad)
    assert torch.isfinite(buf.data).all() and buf.pos == 4
    assert torch.equal(buf.data[:4, 0], (h + 100)[2:])
    h_s, c_s = buf.sample(5)
    assert h_s.shape == (5, 4) and c_s.shape == (5, 4)


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_lowers_its_loss(stage, one_thread):
    """Each curriculum stage, alone on tiny sizes, lowers its loss within 200 steps."""
    iterations = tuple(200 if s == stage else 0 for s in STAGES)
    config = CloningConfig(iterations=iterations, connections=64, networks=8, deep_sizes=(3, 3, 2), log_every=1,
                           lr=1e-2, state_size=8, msg_size=4, buffer_size=4096, seed=0, chain_connections=32, chain_length=4)
    _, history = train_cloning(config)
    losses = torch.tensor([row["loss"] for row in history])
    assert len(losses) == 200 and all(row["stage"] == stage for row in history)
    first, last = losses[:20].mean().item(), losses[-20:].mean().item()
    assert last < 0.6 * first, (first, last)
    assert history[-1]["skipped"] == 0


def test_chain_stage_cuts_the_drift_from_exact_backprop(one_thread):
    """After the chain stage the weights a rule holds stay closer to exact backprop's over many
    updates than before it (the drift it is there to train away)."""
    config = CloningConfig(iterations=(0, 150, 0, 0), lr=1e-2, state_size=8, msg_size=4, buffer_size=2048, seed=0,
                           chain_connections=64, chain_length=8, log_every=50)
    torch.manual_seed(0)
    agent = make_cloned_vsml(config)
    before = chain_drift(agent, config, steps=20, count=512)
    assert before["exact_change"] > 0.1 and before["clone_gap"] > 0
    agent, _ = train_cloning(config, agent=agent)
    after = chain_drift(agent, config, steps=20, count=512)
    assert after["clone_gap"] < 0.7 * before["clone_gap"], (before, after)  # measured: 0.265 -> 0.150


def test_mixed_inputs_are_pixel_like_a_third_of_the_time():
    g = torch.Generator().manual_seed(0)
    x = _inputs(CloningConfig(inputs="mixed"), g, (30000,))
    zeros, unit = (x == 0).float().mean().item(), ((x > 0) & (x < 1)).float().mean().item()
    assert zeros == pytest.approx(1 / 3, abs=0.02)  # exact zeros: a third (normal draws are never 0)
    assert unit == pytest.approx(1 / 3 + (0.3413 / 3), abs=0.02)  # U(0, 1) plus normal draws in (0, 1)
    assert _inputs(CloningConfig(), g, (1000,)).eq(0).sum() == 0
    with pytest.raises(ValueError, match="inputs"):
        CloningConfig(inputs="pixels").check()


def test_initial_clone_loads_a_shipped_rule_or_a_run_folder(tmp_path):
    from rulegym.agents.pretrained import PRETRAINED

    config = CloningConfig()
    agent = initial_clone(config, "vsml_backprop_clone")
    shipped = torch.load(PRETRAINED["vsml_backprop_clone"].path, weights_only=True)
    for key, value in agent.state_dict().items():
        assert torch.equal(value, shipped[key]), key
    torch.save(agent.state_dict(), tmp_path / "meta_params.pt")
    # a run folder says in cloning.json what options its rule was cloned with; without it (a run
    # interrupted before writing it) nothing would check them
    with pytest.raises(ValueError, match="cloning.json"):
        initial_clone(config, str(tmp_path))
    (tmp_path / "cloning.json").write_text(json.dumps({"agent_options": cloned_options(config)}))
    assert torch.equal(initial_clone(config, str(tmp_path)).cells[0].u, agent.cells[0].u)
    # an option the config does not set (clip_state here) is compared too
    (tmp_path / "cloning.json").write_text(json.dumps({"agent_options": {**cloned_options(config), "clip_state": 0.5}}))
    with pytest.raises(ValueError, match="clip_state: 0.5 there, None here"):
        initial_clone(config, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="neither a shipped rule"):
        initial_clone(config, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="state_size"):
        initial_clone(CloningConfig(state_size=8), "vsml_backprop_clone")
    # options outside the meta-parameters must match too, or the states would mean other weights
    with pytest.raises(ValueError, match="weight_scale: 4.0 there, 16.0 here"):
        initial_clone(CloningConfig(weight_scale=16.0), "vsml_backprop_clone")


def test_error_grid_and_figure(tmp_path):
    torch.manual_seed(0)
    agent = make_cloned_vsml(CloningConfig(state_size=6, msg_size=3))
    produced, target = cloning_error_grid(agent, torch.linspace(-1, 1, 5), torch.linspace(-2, 2, 7))
    assert produced.shape == target.shape == (7, 5)
    torch.testing.assert_close(target[3], torch.zeros(5))  # w = 0 row
    stats = plot_error_grid(agent, tmp_path / "fig10", torch.linspace(-1, 1, 5), torch.linspace(-2, 2, 7))
    assert stats["max_abs_error"] >= stats["mean_abs_error"] >= 0
    with Image.open(tmp_path / "fig10.png") as im:
        im.verify()
    assert (tmp_path / "fig10.svg").stat().st_size > 0


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="iterations"):
        CloningConfig(iterations=(1, 2, 3)).check()
    with pytest.raises(ValueError, match="weight_scale"):
        CloningConfig(weight_scale=0.0).check()
    with pytest.raises(ValueError, match="agent_options may not set"):
        CloningConfig(agent_options={"weight_scale": 8.0}).check()
    with pytest.raises(ValueError, match="eta"):
        CloningConfig(eta=float("nan")).check()
    with pytest.raises(ValueError, match="fresh_fraction"):
        CloningConfig(fresh_fraction=1.5).check()
    with pytest.raises(ValueError, match="deep_sizes"):
        CloningConfig(deep_sizes=(3, 0, 2)).check()
    with pytest.raises(ValueError, match="deploy_env must be a registered env id"):
        CloningConfig(deploy_env="rulegym/Nope-v0").check()
    with pytest.raises(ValueError, match="slot_weight"):
        CloningConfig(slot_weight=-1.0).check()
    with pytest.raises(ValueError, match="freeze_forward"):
        check_cloned(make_agent("vsml", 3, 2))
    # an agent built with other options than the config's would ship under the config's
    config = CloningConfig()
    check_cloned(make_cloned_vsml(config), config)
    other = make_agent("vsml", 2, 2, hidden=(2,), **{**cloned_options(config), "weight_scale": 8.0, "clip_state": 0.5})
    with pytest.raises(ValueError, match="clip_state: 0.5 in the agent, None in the config, weight_scale: 8.0 in the agent, 4.0"):
        train_cloning(CloningConfig(iterations=(1, 0, 0, 0)), agent=other)
    for bad, match in (({"agent_options": {"hidden": (3,)}}, "hidden"), ({"agent_options": {"x_dim": 5}}, "x_dim"),
                       ({"deep_sizes": (2.5, 3, 2)}, "deep_sizes"), ({"deploy_hidden": (32,)}, "needs a deploy_env"),
                       ({"deploy_env": "rulegym/Omniglot-v0"}, "episodic")):
        with pytest.raises(ValueError, match=match):
            CloningConfig(**bad).check()


def test_the_command_line_refuses_before_writing_or_training(tmp_path):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "a"), "--ship", "bad-name"])
    assert not (tmp_path / "a").exists()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "meta_params.pt").write_bytes(b"a finished run")
    with pytest.raises(SystemExit):  # not overwritten
        main(["--out", str(tmp_path / "b"), "--iterations", "1,0,0,0"])
    assert (tmp_path / "b" / "meta_params.pt").read_bytes() == b"a finished run"
    with pytest.raises(ValueError, match="init_weight_std"):
        make_agent("vsml", 3, 2, init_weight_std=-1.0)
    assert CLONED_OPTIONS["ticks"] == 1


def test_deployment_drift_tracks_exact_backprop_on_a_real_stream(one_thread):
    """The shipped clone starts on exact backprop's weights and drifts away step by step."""
    import gymnasium as gym

    import rulegym.envs  # noqa: F401
    from rulegym.agents.pretrained import load_pretrained
    from rulegym.learners.cloning import deployment_drift

    rule = load_pretrained("vsml_backprop_clone", 64, 10)
    env = gym.make_vec("rulegym/Digits-v0", num_envs=2, lifetime_length=60)
    rows = deployment_drift(rule, env, eta=0.3, steps=60, every=20)
    assert [r["step"] for r in rows] == [20, 40, 60]
    gaps = [r["gap"] for r in rows]
    assert 0 < gaps[0] < 0.1 and gaps[0] < gaps[-1], rows
    assert rows[-1]["exact_abs_w"] != rows[0]["exact_abs_w"]  # the exact weights moved
    with pytest.raises(ValueError, match="one-layer"):
        deployment_drift(load_pretrained("vsml_backprop_clone", 64, 10, hidden=[4]), env, eta=0.3, steps=1)


def _rescaled(logits: torch.Tensor, k: float) -> torch.Tensor:
    """What ``bound_logits`` gives for k times the raw output behind ``logits``."""
    from rulegym.agents.base import bound_logits
    from rulegym.envs.protocol import LOGIT_BOUND

    return bound_logits(k * LOGIT_BOUND * torch.atanh(logits.double() / LOGIT_BOUND)).float()


def test_bounded_updates_and_logit_scale():
    """bound_updates projects every new weight and bias onto [-weight_bound, weight_bound];
    logit_scale multiplies the logits (tanh_backprop and VSML alike) and nothing else."""
    g = torch.Generator().manual_seed(0)
    obs = {"x": torch.rand(2, 6, generator=g) * 3, "err_prev": torch.randn(2, 3, generator=g) * 20, "y_prev": torch.zeros(2, 3)}
    free = make_agent("tanh_backprop", 6, 3, lr=0.3)
    bounded = make_agent("tanh_backprop", 6, 3, lr=0.3, bound_updates=True, weight_bound=0.5)
    state = free.initial_state(2, generator=torch.Generator().manual_seed(1))
    state["x0"] = obs["x"]
    _, new_free = free.step(obs, state)
    _, new_bounded = bounded.step(obs, state)
    assert new_free["w0"].abs().max() > 0.5 and new_bounded["w0"].abs().max() <= 0.5
    torch.testing.assert_close(new_bounded["w0"], new_free["w0"].clamp(-0.5, 0.5))
    torch.testing.assert_close(new_bounded["b0"], new_free["b0"].clamp(-0.5, 0.5))
    scaled = make_agent("tanh_backprop", 6, 3, lr=0.3, logit_scale=4.0)
    small = {**obs, "err_prev": obs["err_prev"] * 0.01}
    logits, _ = free.step(small, state)
    logits4, new4 = scaled.step(small, state)
    torch.testing.assert_close(logits4, _rescaled(logits, 4.0))
    torch.testing.assert_close(new4["w0"], free.step(small, state)[1]["w0"])  # the same update
    torch.manual_seed(0)
    vsml = make_agent("vsml", 6, 3)
    vsml4 = make_agent("vsml", 6, 3, logit_scale=4.0)
    vsml4.load_state_dict(vsml.state_dict())
    st = vsml.initial_state(2, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(vsml4.step(obs, st)[0], _rescaled(vsml.step(obs, st)[0], 4.0))
    with pytest.raises(ValueError, match="logit_scale"):
        make_agent("vsml", 6, 3, logit_scale=0.0)
    with pytest.raises(ValueError, match="logit_scale"):
        make_agent("tanh_backprop", 6, 3, logit_scale=float("nan"))


def test_slot_spread_is_scored_in_units_of_eta():
    """The decode reads only the mean of the weight slots; slot_weight scores their spread."""
    scale, eta = 4.0, 0.5
    c = torch.zeros(1, 16, 1, 1)
    c[0, 0:8] = 0.25  # weight 1.0 in all eight weight slots, bias 0
    target_w, target_b = torch.ones(1, 1, 1), torch.zeros(1, 1, 1)
    assert _update_error(c, target_w, target_b, scale, eta, slot_weight=1.0).item() == 0.0
    c[0, 0] += 0.125  # parted: the mean (the weight) moves by 1/16 of a slot's 0.5 change ...
    c[0, 1] -= 0.125  # ... and back: the weight is still exactly 1.0
    plain = _update_error(c, target_w, target_b, scale, eta)
    assert plain.item() == pytest.approx(0.0, abs=1e-12)  # unseen without the spread term
    # spread of two slots by +-0.125 * scale / eta = +-1 eta unit, over 8 slots: mean square 2/8
    assert _update_error(c, target_w, target_b, scale, eta, slot_weight=2.0).item() == pytest.approx(2.0 * 2 / 8)


def test_deployed_states_come_from_a_rule_learning_on_a_real_stream(one_thread):
    import gymnasium as gym

    config = CloningConfig(iterations=(4, 0, 0, 0), connections=16, deploy_env="rulegym/Digits-v0",
                           deploy_every=2, deploy_lifetimes=2, deploy_steps=5, deploy_states=64)
    agent, history = train_cloning(config)  # refills the buffer at steps 0 and 2
    assert len(history) >= 1 and math.isfinite(history[-1]["loss"])
    env = gym.make_vec("rulegym/Digits-v0", num_envs=2, lifetime_length=5)
    h, c = deployed_states(agent, cloned_options(config), env, 5, 64, torch.Generator().manual_seed(0), seed=0)
    assert h.shape == c.shape == (64, config.state_size) and torch.isfinite(c).all()
    # they are states of a 64-input layer after some of its updates: not all the initial ones
    rule = make_agent("vsml", 64, 10, **cloned_options(config))
    start = rule.initial_state(2, generator=torch.Generator().manual_seed(0))["c0"]
    assert not torch.isin(c, start).all()


def test_deployed_states_of_a_deep_network_are_drawn_from_every_layer(one_thread):
    import gymnasium as gym

    from rulegym.train.loop import _to_torch

    config = CloningConfig(iterations=(1, 0, 0, 0), deploy_hidden=(4,))
    agent = make_cloned_vsml(config)
    options = {**cloned_options(config), "hidden": config.deploy_hidden}
    env = gym.make_vec("rulegym/Digits-v0", num_envs=2, lifetime_length=3)
    h, c = deployed_states(agent, options, env, 1, 400, torch.Generator().manual_seed(0), seed=0)
    assert h.shape == c.shape == (400, config.state_size)
    # the same lifetimes' states after their first step, layer by layer
    rule = make_agent("vsml", 64, 10, **options)
    rule.load_state_dict(agent.state_dict())
    state = rule.initial_state(2, generator=torch.Generator().manual_seed(0))
    obs, _ = env.reset(seed=0)
    with torch.no_grad():
        _, state = rule.step(_to_torch(obs, torch.device("cpu")), state)
    layers = [state[f"c{k}"].permute(0, 2, 3, 1).reshape(-1, config.state_size) for k in range(2)]
    assert layers[0].shape[0] == 2 * 4 * 64 and layers[1].shape[0] == 2 * 10 * 4
    # (equal up to float rounding: the two runs may take different kernels)
    in_layer = torch.stack([(c[:, None] - layer[None]).abs().amax(dim=-1).amin(dim=1) < 1e-5 for layer in layers])  # [2, 400]
    assert in_layer.any(dim=0).all()  # every state is one of the network's
    hidden_share = in_layer[0].float().mean().item()
    assert 0.35 < hidden_share < 0.65  # evenly over the layers, though the first has 6.4x the connections
    with pytest.raises(ValueError, match="deploy_hidden"):
        CloningConfig(deploy_hidden=(0,)).check()


def test_deep_stages_clip_the_bias_targets_as_the_weight_targets(monkeypatch):
    from rulegym.learners import cloning

    config = CloningConfig(bound_updates=True, train_weight_std=16.0, networks=8)
    seen = []
    real = cloning._update_error

    def spy(c_new, w_target, b_target, *rest):
        seen.append((w_target.abs().max().item(), b_target.abs().max().item()))
        return real(c_new, w_target, b_target, *rest)

    monkeypatch.setattr(cloning, "_update_error", spy)
    g = torch.Generator().manual_seed(0)
    cloning.deep_loss(make_cloned_vsml(config), StateBuffer(config, g), config, g, own=False)
    bound = cloning.target_bound(config)
    assert len(seen) == 2 and all(w <= bound + 1e-6 and b <= bound + 1e-6 for w, b in seen)
    assert max(w for w, _ in seen) == pytest.approx(bound)  # the clip is reached: the states hold weights beyond it

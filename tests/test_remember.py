"""Learning to remember (Gregor 2020): replay buffer, snippet starts, the branch, and that it learns."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch import nn

from rulegym.agents import make_agent
from rulegym.envs.online_env import OnlineVectorEnv
from rulegym.envs.protocol import Task
from rulegym.learners.remember import (
    RememberConfig,
    ReplayBuffer,
    branch_loss,
    lifetime_seed,
    past_starts,
    train_remember,
)
from rulegym.train.loop import run_lifetime


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


class CycleTask(Task):
    """A tiny repeating stream: 4 symbols in a cycle whose order is drawn per lifetime.

    x_t = onehot(current symbol), label = the next one: learnable only within a lifetime."""

    n_classes = 4
    x_bound = 1.0

    def __init__(self, lifetime_length: int = 1000):
        self.lifetime_length = lifetime_length
        self.x_shape = (4,)

    def sample_instance(self, rng):
        return {"order": rng.permutation(4), "phase": rng.integers(4, size=1)}

    def observe(self, inst, t):
        rows = np.arange(t.shape[0])
        pos = inst["phase"][:, 0] + t
        cur, nxt = inst["order"][rows, pos % 4], inst["order"][rows, (pos + 1) % 4]
        x = np.zeros((t.shape[0], 4), dtype=np.float32)
        x[rows, cur] = 1.0
        return x, nxt.astype(np.int64), np.ones(t.shape[0], dtype=bool)


def tiny_vsn(seed=0, **opts):
    torch.manual_seed(seed)
    return make_agent("vsn", 4, 4, **{**dict(io="tied", neurons=4, state_size=4, op_hidden=8, embed_dim=2), **opts})


def cycle_snippet(batch=2, steps=10, seed=0):
    env = OnlineVectorEnv(CycleTask(100), batch)
    obs, _ = env.reset(seed=seed)
    xs, ys = [], []
    for _ in range(steps):
        xs.append(obs["x"])
        obs, _, _, _, info = env.step(np.zeros((batch, 4), dtype=np.float32))
        ys.append(info["label"])
    return np.stack(xs), np.stack(ys), np.ones((steps, batch), dtype=bool)


def online_state(agent, steps=5, batch=2, grad=False):
    """The agent's state after reading ``steps`` steps of a cycle stream."""
    x, y, _ = cycle_snippet(batch, steps, seed=7)
    state = agent.initial_state(batch, torch.Generator().manual_seed(0))
    y_prev = err_prev = torch.zeros(batch, 4)
    with torch.set_grad_enabled(grad):
        for t in range(steps):
            logits, state = agent.step({"x": torch.from_numpy(x[t]), "y_prev": y_prev, "err_prev": err_prev}, state)
            y_prev = nn.functional.one_hot(torch.from_numpy(y[t]), 4).float()
            err_prev = logits.detach().softmax(-1) - y_prev
    return state


# ------------------------------------------------------------------ buffer and starts


def test_replay_buffer_keeps_the_last_steps():
    buf = ReplayBuffer(capacity=5, num_envs=2, x_dim=1)
    for t in range(12):
        buf.push(np.array([[t], [100 + t]], dtype=np.float32), np.array([t, 100 + t]), np.array([True, t % 2 == 0]))
    x, y, m = buf.snippet(np.array([7, 8]), 3)
    assert x.shape == (3, 2, 1) and y.shape == (3, 2)
    np.testing.assert_array_equal(y[:, 0], [7, 8, 9])
    np.testing.assert_array_equal(y[:, 1], [108, 109, 110])
    np.testing.assert_array_equal(x[:, 1, 0], [108, 109, 110])
    np.testing.assert_array_equal(m[:, 1], [True, False, True])  # steps 8, 9, 10
    with pytest.raises(IndexError, match="not in the buffer"):
        buf.snippet(np.array([6, 7]), 3)  # step 6 fell out of the ring
    with pytest.raises(IndexError, match="not in the buffer"):
        buf.snippet(np.array([10, 10]), 3)  # step 12 is in the future


def test_past_starts_are_uniform_in_the_delay_window():
    rng = np.random.default_rng(0)
    s = past_starts(200, 10, 80, 20000, rng)
    assert s.min() == 120 and s.max() == 190
    counts = np.bincount(s - 120)
    assert counts.min() > 0.7 * counts.mean() and counts.max() < 1.3 * counts.mean()
    np.testing.assert_array_equal(past_starts(200, 10, 10, 5, rng), 190)  # delay == T: the block just read
    assert past_starts(30, 10, 80, 1000, rng).min() == 0  # clipped at the start of the lifetime
    with pytest.raises(ValueError, match="needs at least T"):
        past_starts(5, 10, 80, 1, rng)
    assert lifetime_seed(1, 0, 8) != lifetime_seed(0, 1, 8)


# ------------------------------------------------------------------ the branch


def test_branch_leaves_the_online_state_untouched():
    agent = tiny_vsn(op_w="lstm")
    state = online_state(agent)
    before = {k: v.clone() for k, v in state.items()}
    x, y, m = cycle_snippet()
    loss = branch_loss(agent, state, x, y, m)
    loss.backward()
    assert loss.item() > 0
    for k in state:
        torch.testing.assert_close(state[k], before[k], atol=0, rtol=0)


def test_branch_reads_weights_not_activations():
    agent = tiny_vsn()
    s = online_state(agent)
    x, y, m = cycle_snippet()
    with torch.no_grad():
        base = branch_loss(agent, s, x, y, m)
        other_acts = branch_loss(agent, {**s, "h": torch.randn_like(s["h"])}, x, y, m)
        other_w = branch_loss(agent, {**s, "w_io": torch.randn_like(s["w_io"])}, x, y, m)
    torch.testing.assert_close(base, other_acts, atol=0, rtol=0)
    assert not torch.allclose(base, other_w)


def test_lstm_branch_starts_from_zeros():
    """The LSTM baselines keep only activations, so every branch is a cold start."""
    torch.manual_seed(0)
    agent = make_agent("lstm16", 4, 4, hidden=6)
    s = online_state(agent)
    x, y, m = cycle_snippet()
    with torch.no_grad():
        a = branch_loss(agent, s, x, y, m)
        b = branch_loss(agent, agent.initial_state(2), x, y, m)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_remember_gradient_spans_the_current_block():
    """The snippet's loss reaches the weights the current block started from (2T-step BPTT)
    and every meta-parameter, embeddings included."""
    agent = tiny_vsn()
    start = agent.initial_state(2, torch.Generator().manual_seed(0))
    w0 = start["w_io"].clone().requires_grad_(True)
    state = {**start, "w_io": w0}
    x, y, m = cycle_snippet(2, 10, seed=3)
    y_prev = err_prev = torch.zeros(2, 4)
    for t in range(10):  # the current block, with graph
        logits, state = agent.step({"x": torch.from_numpy(x[t]), "y_prev": y_prev, "err_prev": err_prev}, state)
        y_prev = nn.functional.one_hot(torch.from_numpy(y[t]), 4).float()
        err_prev = logits.detach().softmax(-1) - y_prev
    branch_loss(agent, state, x, y, m).backward()
    assert w0.grad is not None and w0.grad.abs().sum() > 0
    for name, p in agent.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_online_stream_is_not_disturbed_by_the_branches():
    """With a (practically) zero learning rate, the online losses equal a plain run of the loop."""
    agent = tiny_vsn()
    env = OnlineVectorEnv(CycleTask(60), 2)
    res = train_remember(agent, env, steps=60, num_envs=2, T=10, delay=30, lr=1e-30, seed=3)
    ref_env = OnlineVectorEnv(CycleTask(60), 2)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        ref = run_lifetime(agent, ref_env, 60, seed=lifetime_seed(3, 0, 2), generator=gen)
    want = ref.loss.reshape(6, 10, 2).mean(dim=(1, 2)).double().numpy()
    np.testing.assert_allclose(res.online_curve, want, rtol=1e-5, atol=1e-6)
    assert res.online_curve.shape == res.remember_curve.shape == (6,)


# ------------------------------------------------------------------ training


def test_remember_loss_falls_on_a_repeating_stream():
    agent = tiny_vsn()
    env = OnlineVectorEnv(CycleTask(100), 4)
    res = train_remember(agent, env, steps=300, num_envs=4, T=10, delay=20, lr=3e-2, lifetime_length=100, seed=0)
    s = res.summary
    assert s["early_remember_bits"] > 1.5  # about log2(4) = 2 bits at the start
    assert s["final_remember_bits"] < 0.5 * s["early_remember_bits"], s
    assert s["final_loss_bits"] < 0.5 * s["early_loss_bits"], s
    assert res.params == sum(p.numel() for p in agent.parameters())


def test_bad_configs_have_clear_errors():
    agent = tiny_vsn()
    env = OnlineVectorEnv(CycleTask(100), 2)
    with pytest.raises(ValueError, match="delay >= T"):
        train_remember(agent, env, num_envs=2, steps=100, T=10, delay=5)
    with pytest.raises(ValueError, match="multiple of T"):
        train_remember(agent, env, num_envs=2, steps=95, T=10, delay=20)
    with pytest.raises(ValueError, match="lifetime_length"):
        train_remember(agent, env, num_envs=2, steps=100, T=10, delay=20, lifetime_length=15)
    with pytest.raises(ValueError, match="num_envs"):
        train_remember(agent, env, num_envs=3, steps=100, T=10, delay=20)
    with pytest.raises(ValueError, match="shorter"):
        train_remember(agent, env, num_envs=2, steps=200, T=10, delay=20)
    with pytest.raises(TypeError, match="unexpected keyword"):
        train_remember(agent, env, num_envs=2, stepz=100)
    with pytest.raises(ValueError, match="built for x_dim=3"):
        train_remember(make_agent("vsn", 3, 4), env, num_envs=2, steps=100, T=10, delay=20)
    with pytest.raises(ValueError, match="lr must be positive"):
        RememberConfig(lr=0.0).check()


# ------------------------------------------------------------------ the Figure-1 experiment


def test_fig1_plan_dedupes_and_tags_comparisons():
    from rulegym.train.experiments.gregor_fig1 import BUDGETS, plan

    b = BUDGETS["quick"]
    jobs = plan(b)
    keys = [j.key for j in jobs]
    assert len(keys) == len(set(keys))
    grid = [j for j in jobs if "grid" in j.groups]
    assert len(grid) == len(b.ops_h) * len(b.ops_w) * len(b.delays) * b.grid_seeds
    both = [j for j in jobs if "grid" in j.groups and "state" in j.groups]
    assert both, "the state-size comparison reuses the grid's runs"
    assert {j.neurons for j in jobs if j.kind == "lstm"} == set(b.lstm_sizes)
    assert {j.neurons for j in jobs if "scaling" in j.groups} == set(b.neuron_scaling)


def test_fig1_findings_read_the_numbers():
    from rulegym.train.experiments.gregor_fig1 import Budget, findings

    b = Budget(name="t", steps=10, num_envs=1, ops_h=("gated",), ops_w=("mlp", "gated"), grid_seeds=1, seeds=1,
               neuron_scaling=(8, 16), lstm_sizes=(16,))

    def row(kind, delay, op_w="", size=6, neurons=16, final=4.0, groups="grid"):
        return {"config": f"{kind}{op_w}{size}{neurons}", "kind": kind, "delay": delay, "op_h": "gated" if kind == "vsn" else "",
                "op_w": op_w, "state_size": size, "neurons": neurons, "seed": 0, "groups": groups, "meta_parameters": 1,
                "network_parameters": 1, "early_loss_bits": 4.7, "final_loss_bits": final,
                "final_remember_bits": final, "final_online_bits": final}

    rows = []
    for d in (10, 80):
        rows += [row("vsn", d, "mlp", final=4.6), row("vsn", d, "gated", final=3.9, groups="grid+state"),
                 row("vsn", d, "gated", size=14, final=3.8, groups="state"), row("lstm", d, neurons=16, final=4.1, groups="lstm")]
    rows += [row("vsn", 80, "gated", neurons=8, final=3.92, groups="scaling")]
    rows[5]["groups"] = "grid+state+scaling"
    text = "\n".join(findings(rows, b))
    assert "GATED weight updates best at delay 80: HELD" in text
    assert "MLP weight updates fail (worst OP_w): HELD" in text
    assert "State 14 better than 6: HELD" in text
    assert "VSN better than the LSTMs, objective (mean final loss of the best config): HELD" in text
    assert "No improvement with more neurons (paper): HELD" in text


@pytest.mark.skipif(not __import__("os").environ.get("RULEGYM_DATA"), reason="needs RULEGYM_DATA for the Wizard of Oz text")
def test_fig1_micro_run_writes_tables_and_figure(tmp_path, monkeypatch):
    from dataclasses import replace

    from rulegym.train.experiments import gregor_fig1
    from rulegym.train.experiments.gregor_fig1 import Budget, plan, report_fig1, run_fig1

    b = Budget(name="micro", steps=20, num_envs=1, ops_h=("gated",), ops_w=("mlp", "gated"), grid_seeds=1, seeds=1,
               state_sizes=(2, 3), grid_state=2, neurons=2, op_hidden=4, embed_dim=2, neuron_scaling=(2,), lstm_sizes=(4,))
    res = run_fig1(tmp_path, b, workers=1, progress=False)
    for name in ("runs.csv", "summary.csv", "summary.md", "fig1.png", "curves.npz", "config.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert len(res["findings"]) == 6
    assert "| 80 | LSTM 4 |" in (tmp_path / "summary.md").read_text()
    assert report_fig1(tmp_path) == res["findings"]  # tables and figure rebuild from runs.csv
    # every run was written as it finished: an interrupted call resumes with the missing runs only
    finished = sorted((tmp_path / "runs").glob("*.npz"))
    assert len(finished) == len(plan(b))
    def losses():  # runs.csv without the seconds each run took
        with open(tmp_path / "runs.csv", newline="") as f:
            return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]

    before = losses()
    finished[0].unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in finished[1:]}
    ran = []
    real = gregor_fig1.run_job
    monkeypatch.setattr(gregor_fig1, "run_job", lambda job, budget: ran.append(job) or real(job, budget))
    again = run_fig1(tmp_path, b, workers=1, progress=False)
    assert len(ran) == 1 and again["findings"] == res["findings"]
    assert {p.name: p.stat().st_mtime_ns for p in finished[1:]} == stamps
    assert losses() == before  # the rerun one included, in the same order
    with pytest.raises(ValueError, match="another budget"):
        run_fig1(tmp_path, replace(b, steps=40), workers=1, progress=False)

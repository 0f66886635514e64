"""The native VSML tick: agreement with the reference tick, its buffers, and its fallbacks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from rulegym.agents import make_agent, vsml_kernels, vsml_native
from rulegym.agents.vsml_kernels import gate_inputs, lstm_tick_reference

pytestmark = pytest.mark.skipif(not vsml_native.available(), reason="no C++ compiler for the native tick")


def inputs(L, n, b, a, msg, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, c = torch.randn(L, n, b, a, generator=g), torch.randn(L, n, b, a, generator=g)
    u = torch.randn(4 * n, n, generator=g) * 0.5
    w = torch.randn(4 * n, msg, generator=g) * 0.5
    m = torch.randn(L, a, msg, generator=g)
    gb = torch.randn(L, 4 * n, b, generator=g) * 2
    return h, c, u, w, m, gb


def reference(h, c, u, w, m, gb, clip, ticks):
    ga = gate_inputs(w, m)
    for _ in range(ticks):
        h, c = lstm_tick_reference(h, c, u, ga, gb, clip)
    return h, c


@pytest.mark.parametrize(
    "L,n,b,a,msg",
    [(1, 16, 10, 784, 8), (3, 16, 4, 37, 8), (2, 5, 3, 40, 3), (1, 32, 2, 17, 8), (2, 1, 1, 1, 1), (1, 7, 6, 16, 64)],
)
@pytest.mark.parametrize("clip", [None, 0.3])
@pytest.mark.parametrize("ticks", [1, 3])
def test_native_tick_equals_reference(L, n, b, a, msg, clip, ticks):
    """Any state size up to 32, message size up to 64, input counts off the 16-block, clipping."""
    args = inputs(L, n, b, a, msg)
    h0, c0 = args[0].clone(), args[1].clone()
    ref_h, ref_c = reference(*args, clip, ticks)
    h, c, h_mean = vsml_native.lstm_ticks(*args, clip, ticks, mean_inputs=True)
    torch.testing.assert_close(h, ref_h, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(c, ref_c, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(h_mean, ref_h.mean(dim=3), rtol=1e-5, atol=2e-6)
    assert torch.equal(args[0], h0) and torch.equal(args[1], c0)
    if clip is not None:
        assert c.abs().max() <= clip


def test_saturated_gates_and_nan_propagate():
    """Gates far in saturation give exact limits; a NaN in the state stays a NaN."""
    h, c, u, w, m, gb = inputs(1, 4, 2, 16, 2)
    gb = gb * 1e4  # every gate pre-activation saturated
    ref = reference(h, c, u, w, m, gb, None, 2)
    out = vsml_native.lstm_ticks(h, c, u, w, m, gb, None, 2)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(out[1], ref[1], rtol=1e-5, atol=2e-6)
    h[0, 1, 1, 3] = float("nan")
    out = vsml_native.lstm_ticks(h, c, u, w, m, gb, None, 1)
    assert torch.isnan(out[0][0, :, 1, 3]).any()
    assert torch.isfinite(out[0][0, :, 0]).all()  # other connections are untouched by it


def test_agent_with_and_without_the_native_tick(monkeypatch):
    """A whole VSML lifetime step by step is the same on the native and the torch path."""
    torch.manual_seed(0)
    agent = make_agent("vsml", 40, 5, hidden=(12,), backward_pass=True, clip_state=4.0)
    g = torch.Generator().manual_seed(1)
    state_native = agent.initial_state(3, torch.Generator().manual_seed(2))
    state_torch = {k: v.clone() for k, v in state_native.items()}
    with torch.no_grad():
        for _ in range(10):
            y = torch.randint(5, (3,), generator=g)
            onehot = torch.nn.functional.one_hot(y, 5).float()
            obs = {"x": torch.randn(3, 40, generator=g), "y_prev": onehot, "err_prev": torch.softmax(torch.randn(3, 5, generator=g), -1) - onehot}
            logits_n, state_native = agent.step(obs, state_native)
            monkeypatch.setattr(vsml_kernels, "USE_NATIVE", False)
            logits_t, state_torch = agent.step(obs, state_torch)
            monkeypatch.setattr(vsml_kernels, "USE_NATIVE", True)
            torch.testing.assert_close(logits_n, logits_t, rtol=1e-4, atol=1e-5)
    for k in state_native:
        torch.testing.assert_close(state_native[k], state_torch[k], rtol=1e-4, atol=1e-5)


def test_buffers_are_reused_only_when_nothing_references_them():
    pool = vsml_native.BufferPool()
    if pool._use_count is None:
        pytest.skip("this torch exposes no storage reference count")
    a = pool.empty((4, 5))
    a.fill_(1.0)
    b = pool.empty((4, 5))
    assert a.data_ptr() != b.data_ptr()  # a is still held
    view = a[1:]
    as_numpy = b.numpy()
    del a, b
    c = pool.empty((4, 5))
    d = pool.empty((4, 5))
    held = {view.data_ptr() - 5 * 4, as_numpy.__array_interface__["data"][0]}
    assert c.data_ptr() not in held and d.data_ptr() not in held  # views and numpy arrays count
    assert np.all(as_numpy == as_numpy) and view.sum() == 15.0
    ptr_c = c.data_ptr()
    del c
    assert pool.empty((4, 5)).data_ptr() == ptr_c  # dropped: recycled
    small = vsml_native.BufferPool(max_bytes=16)
    x = small.empty((4, 5))
    assert small._bytes == 0 and x.shape == (4, 5)  # over the bound: not pooled


def test_inference_mode_buffers_are_not_handed_to_ordinary_calls():
    pool = vsml_native.BufferPool()
    if pool._use_count is None:
        pytest.skip("this torch exposes no storage reference count")
    with torch.inference_mode():
        a = pool.empty((3, 2))
        ptr = a.data_ptr()
    assert a.is_inference()
    del a
    b = pool.empty((3, 2))  # an ordinary tensor, which autograd may save
    assert not b.is_inference() and b.data_ptr() != ptr
    w = torch.ones(2, requires_grad=True)
    (b.zero_() * w).sum().backward()
    with torch.inference_mode():
        assert pool.empty((3, 2)).data_ptr() == ptr  # still recycled within inference_mode


def test_a_lifetime_run_under_inference_mode_leaves_later_states_differentiable():
    agent = make_agent("vsml", 20, 4)
    obs = {"x": torch.randn(2, 20), "y_prev": torch.zeros(2, 4), "err_prev": torch.zeros(2, 4)}
    with torch.inference_mode():
        state = agent.initial_state(2)
        for _ in range(3):
            _, state = agent.step(obs, state)
    del state
    with torch.no_grad():
        _, state = agent.step(obs, agent.initial_state(2))  # e.g. a warm-up before BPTT
    assert not state["h0"].is_inference()
    logits, _ = agent.step(obs, state)
    logits.sum().backward()
    assert all(p.grad is not None for p in agent.parameters() if p.requires_grad)


def test_failed_build_falls_back_with_one_warning(monkeypatch, tmp_path):
    """No compiler: a warning naming the fix, then the torch path gives the same result."""
    monkeypatch.setattr(vsml_native, "_lib", None)
    monkeypatch.setattr(vsml_native, "_tried", False)
    monkeypatch.setenv("RULEGYM_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="RULEGYM_NATIVE=0"):
        assert vsml_native.library() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning is given once
        assert not vsml_native.available()
    args = inputs(2, 4, 3, 20, 3)
    with torch.no_grad():
        out = vsml_kernels.lstm_ticks(*args, None, 2)
    ref = reference(*args, None, 2)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=2e-6)


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setattr(vsml_native, "_lib", None)
    monkeypatch.setattr(vsml_native, "_tried", False)
    monkeypatch.setenv("RULEGYM_NATIVE", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert vsml_native.library() is None


def test_built_library_is_cached_by_source_and_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("RULEGYM_CACHE", str(tmp_path))
    path = vsml_native._build()
    assert path.exists() and path.parent == tmp_path / "kernels"
    stamp = path.stat().st_mtime_ns
    assert vsml_native._build() == path and path.stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_unsupported_sizes_use_the_torch_path():
    h, c, u, w, m, gb = inputs(1, 33, 2, 5, 3)
    assert not vsml_native.supports(h, m, c, u, w, gb)
    h, c, u, w, m, gb = inputs(1, 4, 2, 5, 65)
    assert not vsml_native.supports(h, m, c, u, w, gb)
    assert not vsml_native.supports(h.double(), m.double())
    with torch.no_grad():
        out = vsml_kernels.lstm_ticks(h, c, u, w, m, gb, None, 1)
    torch.testing.assert_close(out[0], reference(h, c, u, w, m, gb, None, 1)[0])

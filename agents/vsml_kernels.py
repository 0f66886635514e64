"""The sub-LSTM tick of a VSML layer: one update of all L*A*B sub-LSTMs.

Layout: h and c are [L, N, A, B] (lifetimes first, then the state component, then the
connections), so the recurrent gate product is a [4N, N] @ [N, connections] matmul -- the
layout that runs near the machine's matmul peak -- and each gate is a contiguous slab. The
input parts of the gates arrive pre-reduced: ``gate_a`` [L, 4N, A] (from the forward message
of input a) and ``gate_b`` [L, 4N, B] (from the backward message of output b, plus the bias),
broadcast over the connections.

Three implementations of the same tick:

* :func:`lstm_tick_reference` -- plain tensor code; used under ``torch.func`` transforms
  (population vmap) and as the definition the others are tested against.
* the no-grad path -- works through the connections in cache-sized chunks with one reused
  gate buffer, writes the new state in place into fresh output tensors, fuses the gate math
  into in-place ops and evaluates every tanh as 2*sigmoid(2x) - 1 (sigmoid is about 3x
  cheaper per element here; the factor 2 of the g gate is folded into its weights).
* :class:`LSTMTick` -- an autograd Function with the same chunked forward; its backward
  recomputes the gates chunk by chunk from the saved input state, so a lifetime's graph keeps
  only the states, never the [L, 4N, A, B] gate activations.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: connections per chunk: the [4N, chunk] gate buffer (2 MB at N = 16) stays in cache
CHUNK_CONNECTIONS = 8192


def lstm_tick_reference(h: Tensor, c: Tensor, u: Tensor, gate_a: Tensor, gate_b: Tensor, clip: float | None):
    """The tick written plainly; the definition the fast paths are tested against."""
    L, n, a, b = h.shape
    z = torch.matmul(u, h.reshape(L, n, a * b)).view(L, 4 * n, a, b)
    z = z + gate_a[..., None] + gate_b[:, :, None, :]
    i, f, g, o = z.split(n, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    if clip is not None:
        c = c.clamp(-clip, clip)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def conv_lstm_tick(h: Tensor, c: Tensor, u: Tensor, gate_a: Tensor, gate_b: Tensor, clip: float | None):
    """One tick of a convolutional VSML layer.

    h, c: [L, N, K, O] (one sub-LSTM per kernel weight: K patch elements x O channels);
    gate_a: [L, 4N, K, P] (input of patch element k at position p); gate_b: [L, 4N, O, P]
    (backward message of channel o at position p, plus bias). Every weight is applied at every
    position; its new state is the mean of the per-position updates. Returns (h, c, h_pos)
    with h_pos [L, N, K, O, P] the per-position outputs the forward messages read.
    """
    L, n, k, o = h.shape
    uh = torch.matmul(u, h.reshape(L, n, k * o)).view(L, 4 * n, k, o, 1)
    z = uh + gate_a[:, :, :, None, :] + gate_b[:, :, None, :, :]
    i, f, g, og = z.split(n, dim=1)
    c_pos = torch.sigmoid(f) * c[..., None] + torch.sigmoid(i) * torch.tanh(g)
    if clip is not None:
        c_pos = c_pos.clamp(-clip, clip)
    h_pos = torch.sigmoid(og) * torch.tanh(c_pos)
    return h_pos.mean(dim=-1), c_pos.mean(dim=-1), h_pos


def conv_lstm_ticks(h, c, u, gate_a, gate_b, clip, ticks: int = 1):
    """``ticks`` conv ticks with the same inputs; returns (h, c, h_pos of the last tick)."""
    for _ in range(ticks):
        h, c, h_pos = conv_lstm_tick(h, c, u, gate_a, gate_b, clip)
    return h, c, h_pos


def _chunks(L: int, a: int, b: int, chunk: int):
    """Yield (lifetime slice, input slice): blocks of whole lifetimes or of input rows of one."""
    per_life = a * b
    if per_life <= chunk:
        step = max(1, chunk // per_life)
        for l0 in range(0, L, step):
            yield slice(l0, min(L, l0 + step)), slice(0, a)
    else:
        rows = max(1, chunk // b)
        for l in range(L):
            for a0 in range(0, a, rows):
                yield slice(l, l + 1), slice(a0, min(a, a0 + rows))


def _doubled_g(u: Tensor, gate_a: Tensor, gate_b: Tensor, n: int):
    """Scale the g-gate rows by 2 so one sigmoid over all gates gives sigmoid(2 z_g)."""
    scale = torch.ones(4 * n, 1, dtype=u.dtype, device=u.device)
    scale[2 * n : 3 * n] = 2.0
    return u * scale, gate_a * scale, gate_b * scale


def _gates_into(z: Tensor, u2: Tensor, h: Tensor, ga: Tensor, gb: Tensor) -> Tensor:
    """z [Lc, 4N, Ac, B] <- sigmoid(u2 @ h + ga + gb) with the g rows pre-doubled."""
    Lc, n, ac, b = h.shape
    torch.matmul(u2, h.reshape(Lc, n, ac * b), out=z.view(Lc, 4 * n, ac * b))
    z.add_(ga[..., None]).add_(gb[:, :, None, :])
    return z.sigmoid_()


def _tick_chunks(h, c, h_out, c_out, u2, ga2, gb2, clip, chunk=CHUNK_CONNECTIONS):
    """Chunked, in-place forward tick: (h, c) -> (h_out, c_out) (may alias h, c)."""
    L, n, a, b = h.shape
    buf = torch.empty(4 * n * min(chunk + a * b, L * a * b), dtype=h.dtype, device=h.device)
    for ls, as_ in _chunks(L, a, b, chunk):
        hc, cc = h[ls, :, as_], c[ls, :, as_]
        Lc, ac = hc.shape[0], hc.shape[2]
        z = buf[: Lc * 4 * n * ac * b].view(Lc, 4 * n, ac, b)
        _gates_into(z, u2, hc, ga2[ls, :, as_], gb2[ls])
        i, f, g, o = z.split(n, dim=1)
        g.mul_(2.0).sub_(1.0).mul_(i)  # i * tanh(z_g)
        co = c_out[ls, :, as_]
        torch.addcmul(g, f, cc, out=co)  # c' = f * c + i * g
        if clip is not None:
            co.clamp_(-clip, clip)
        torch.mul(co, 2.0, out=f).sigmoid_().mul_(2.0).sub_(1.0)  # tanh(c')
        torch.mul(o, f, out=h_out[ls, :, as_])


class LSTMTick(torch.autograd.Function):
    """A memory-lean differentiable tick: chunked forward, gates recomputed in backward."""

    @staticmethod
    def forward(ctx, h, c, u, gate_a, gate_b, clip):
        n = h.shape[1]
        u2, ga2, gb2 = _doubled_g(u, gate_a, gate_b, n)
        h_out, c_out = torch.empty_like(h), torch.empty_like(c)
        _tick_chunks(h, c, h_out, c_out, u2, ga2, gb2, clip)
        ctx.save_for_backward(h, c, u, gate_a, gate_b, c_out)
        ctx.clip = clip
        return h_out, c_out

    @staticmethod
    def backward(ctx, dh_out, dc_out):
        h, c, u, gate_a, gate_b, c_out = ctx.saved_tensors
        clip = ctx.clip
        L, n, a, b = h.shape
        u2, ga2, gb2 = _doubled_g(u, gate_a, gate_b, n)
        if dh_out is None:
            dh_out = torch.zeros_like(h)
        if dc_out is None:
            dc_out = torch.zeros_like(c)
        dh, dc = torch.empty_like(h), torch.empty_like(c)
        du = torch.zeros_like(u)
        dga = torch.empty_like(gate_a)
        dgb = torch.zeros_like(gate_b)
        buf = torch.empty(4 * n * min(CHUNK_CONNECTIONS + a * b, L * a * b), dtype=h.dtype, device=h.device)
        for ls, as_ in _chunks(L, a, b, CHUNK_CONNECTIONS):
            hc, cc, co = h[ls, :, as_], c[ls, :, as_], c_out[ls, :, as_]
            Lc, ac = hc.shape[0], hc.shape[2]
            z = buf[: Lc * 4 * n * ac * b].view(Lc, 4 * n, ac, b)
            _gates_into(z, u2, hc, ga2[ls, :, as_], gb2[ls])
            i, f, g2, o = z.split(n, dim=1)
            g = g2 * 2.0 - 1.0  # tanh(z_g)
            tc = torch.tanh(co)
            dhc = dh_out[ls, :, as_]
            dct = dc_out[ls, :, as_] + dhc * o * (1.0 - tc * tc)
            if clip is not None:
                dct = dct * (co.abs() < clip)
            dz = torch.empty_like(z)
            di, df, dg, do = dz.split(n, dim=1)
            torch.mul(dct * g, i * (1.0 - i), out=di)
            torch.mul(dct * cc, f * (1.0 - f), out=df)
            torch.mul(dct * i, 1.0 - g * g, out=dg)
            torch.mul(dhc * tc, o * (1.0 - o), out=do)
            dc[ls, :, as_] = dct * f
            dzf = dz.view(Lc, 4 * n, ac * b)
            dh[ls, :, as_] = torch.matmul(u.t(), dzf).view(Lc, n, ac, b)
            du += torch.matmul(dzf, hc.reshape(Lc, n, ac * b).transpose(1, 2)).sum(0)
            dga[ls, :, as_] = dz.sum(dim=3)
            dgb[ls] += dz.sum(dim=2)
        return dh, dc, du, dga, dgb, None


def _is_transformed(*tensors: Tensor) -> bool:
    """True under torch.func transforms (vmap/grad), where the fused paths do not apply."""
    is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return any(is_wrapped(t) for t in tensors)


def lstm_ticks(h: Tensor, c: Tensor, u: Tensor, gate_a: Tensor, gate_b: Tensor, clip: float | None, ticks: int = 1):
    """``ticks`` ticks of every sub-LSTM with the same inputs; returns the new (h, c).

    Picks the path: the reference under torch.func transforms, the autograd Function when a
    gradient is needed, else the chunked in-place path, which allocates the new state once
    and updates it in place for the remaining ticks (the caller's state is never modified).
    """
    if _is_transformed(h, c, u, gate_a, gate_b):
        for _ in range(ticks):
            h, c = lstm_tick_reference(h, c, u, gate_a, gate_b, clip)
        return h, c
    if torch.is_grad_enabled() and any(t.requires_grad for t in (h, c, u, gate_a, gate_b)):
        for _ in range(ticks):
            h, c = LSTMTick.apply(h, c, u, gate_a, gate_b, clip)
        return h, c
    n = h.shape[1]
    u2, ga2, gb2 = _doubled_g(u, gate_a, gate_b, n)
    h_out, c_out = torch.empty_like(h), torch.empty_like(c)
    _tick_chunks(h, c, h_out, c_out, u2, ga2, gb2, clip)
    for _ in range(ticks - 1):
        _tick_chunks(h_out, c_out, h_out, c_out, u2, ga2, gb2, clip)
    return h_out, c_out

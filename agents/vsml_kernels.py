"""The sub-LSTM tick of a VSML layer: one update of all L*A*B sub-LSTMs.

Layout: h and c are [L, N, B, A] (lifetimes first, then the state component, then the
connections, inputs innermost), so the recurrent gate product is a [4N, N] @ [N, connections]
matmul -- the layout that runs near the machine's matmul peak -- and each gate is a contiguous
slab. The input parts of the gates arrive pre-reduced: ``gate_a`` [L, 4N, A] (from the forward
message of input a) and ``gate_b`` [L, 4N, B] (from the backward message of output b, plus the
bias), broadcast over the connections. With inputs innermost both broadcasts vectorise: gate_a
runs along the contiguous axis and gate_b is a scalar per inner row (inputs outermost with
B = 10 innermost made each add 4x slower).

Four implementations of the same tick:

* :func:`lstm_tick_reference` -- plain tensor code; used under ``torch.func`` transforms
  (population vmap) and as the definition the others are tested against.
* the no-grad path -- works through the connections in cache-sized chunks with one reused
  gate buffer, writes the new state in place into fresh output tensors, fuses the gate math
  into in-place ops and evaluates every tanh as 2*sigmoid(2x) - 1 (sigmoid is about 3x
  cheaper per element here; the factor 2 of the g gate is folded into its weights).
* :class:`LSTMTick` -- an autograd Function with the same chunked forward; its backward
  recomputes the gates chunk by chunk from the saved input state, so a lifetime's graph keeps
  only the states, never the [L, 4N, A, B] gate activations.
* the native tick (:mod:`rulegym.agents.vsml_native`) -- a compiled kernel that runs all ticks
  of a step per block of 16 connections in registers; it replaces the no-grad path for float32
  on the CPU when a C++ compiler is there (``USE_NATIVE``; ``RULEGYM_NATIVE=0`` turns it off).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rulegym.agents import vsml_native

#: use the compiled tick for no-grad float32 CPU ticks where it is available
USE_NATIVE = True
#: connections per chunk: the [4N, chunk] gate buffer (2 MB at N = 16) stays in cache
CHUNK_CONNECTIONS = 8192


def lstm_tick_reference(h: Tensor, c: Tensor, u: Tensor, gate_a: Tensor, gate_b: Tensor, clip: float | None):
    """The tick written plainly; the definition the fast paths are tested against."""
    L, n, b, a = h.shape
    z = torch.matmul(u, h.reshape(L, n, b * a)).view(L, 4 * n, b, a)
    z = z + gate_a[:, :, None, :] + gate_b[..., None]
    i, f, g, o = z.split(n, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    if clip is not None:
        c = c.clamp(-clip, clip)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def conv_lstm_tick(h: Tensor, c: Tensor, u: Tensor, gate_a: Tensor, gate_b: Tensor, clip: float | None):
    """One tick of a convolutional VSML layer.

    h, c: [L, N, O, K] (one sub-LSTM per kernel weight: O channels x K patch elements, laid
    out like a dense layer's [outputs, inputs]); gate_a: [L, 4N, K, P] (input of patch element
    k at position p); gate_b: [L, 4N, O, P] (backward message of channel o at position p, plus
    bias). Every weight is applied at every position; its new state is the mean of the
    per-position updates. Returns (h, c, h_pos) with h_pos [L, N, O, K, P] the per-position
    outputs the forward messages read.
    """
    L, n, o, k = h.shape
    uh = torch.matmul(u, h.reshape(L, n, o * k)).view(L, 4 * n, o, k, 1)
    z = uh + gate_a[:, :, None, :, :] + gate_b[:, :, :, None, :]
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


def _chunks(L: int, b: int, a: int, chunk: int):
    """Yield (lifetime slice, output slice): blocks of whole lifetimes or of output rows of one."""
    per_life = a * b
    if per_life <= chunk:
        step = max(1, chunk // per_life)
        for l0 in range(0, L, step):
            yield slice(l0, min(L, l0 + step)), slice(0, b)
    else:
        rows = max(1, chunk // a)
        for l in range(L):
            for b0 in range(0, b, rows):
                yield slice(l, l + 1), slice(b0, min(b, b0 + rows))


def _doubled_g(u: Tensor, gate_a: Tensor, gate_b: Tensor, n: int):
    """Scale the g-gate rows by 2 so one sigmoid over all gates gives sigmoid(2 z_g)."""
    scale = torch.ones(4 * n, 1, dtype=u.dtype, device=u.device)
    scale[2 * n : 3 * n] = 2.0
    return u * scale, gate_a * scale, gate_b * scale


def _gates_into(z: Tensor, u2: Tensor, h: Tensor, ga: Tensor, gb: Tensor) -> Tensor:
    """z [Lc, 4N, Bc, A] <- sigmoid(u2 @ h + ga + gb) with the g rows pre-doubled."""
    Lc, n, bc, a = h.shape
    torch.matmul(u2, h.reshape(Lc, n, bc * a), out=z.view(Lc, 4 * n, bc * a))
    z.add_(ga[:, :, None, :]).add_(gb[..., None])
    return z.sigmoid_()


def _tick_chunks(h, c, h_out, c_out, u2, ga2, gb2, clip, chunk=None, gates_out=None, tanh_out=None, ticks=1):
    """Chunked, in-place forward ticks: (h, c) -> (h_out, c_out) (may alias h, c).

    The loop is chunk-major: every tick of a chunk runs before the next chunk, which is exact
    (a connection's tick reads only its own state and the step's fixed inputs) and keeps the
    chunk's state and its summed gate inputs in cache across ticks. ``gates_out`` [L, 4N, B, A]
    receives the gate activations (i, f, sigmoid(2 z_g), o) and ``tanh_out`` [L, N, B, A]
    tanh(c'), for a backward pass that need not recompute them (one tick only).
    """
    chunk = chunk or CHUNK_CONNECTIONS
    L, n, b, a = h.shape
    if gates_out is not None and ticks != 1:
        raise ValueError("saving gates is for single ticks")
    size = min(chunk + a * b, L * a * b)
    buf = torch.empty(4 * n * size, dtype=h.dtype, device=h.device) if gates_out is None else None
    gab_buf = torch.empty(4 * n * size, dtype=h.dtype, device=h.device)
    for ls, bs in _chunks(L, b, a, chunk):
        Lc, bc = h[ls, :, bs].shape[0], h[ls, :, bs].shape[2]
        m = Lc * bc * a
        # the input part of every gate of the chunk, summed once for all ticks
        gab = gab_buf[: 4 * n * m].view(Lc, 4 * n, bc, a)
        torch.add(ga2[ls][:, :, None, :], gb2[ls, :, bs][..., None], out=gab)
        for tick in range(ticks):
            src_h, src_c = (h, c) if tick == 0 else (h_out, c_out)
            hc, cc = src_h[ls, :, bs], src_c[ls, :, bs]
            if gates_out is not None and bc == b:
                z = gates_out[ls]
            else:
                z = (buf if buf is not None else torch.empty(4 * n * m, dtype=h.dtype, device=h.device))[: 4 * n * m].view(Lc, 4 * n, bc, a)
            # z = sigmoid(u2 @ h + gab): one GEMM that accumulates onto the copied gate inputs
            z.copy_(gab)
            z.view(Lc, 4 * n, m // Lc).baddbmm_(u2.expand(Lc, -1, -1), hc.reshape(Lc, n, m // Lc))
            z.sigmoid_()
            i, f, g, o = z.split(n, dim=1)  # g holds sigmoid(2 z_g)
            co = c_out[ls, :, bs]
            torch.mul(f, cc, out=co)  # c' = f * c + i * (2 g - 1)
            co.addcmul_(i, g, value=2.0).sub_(i)
            if clip is not None:
                co.clamp_(-clip, clip)
            tc = tanh_out[ls, :, bs] if tanh_out is not None else f
            torch.mul(co, 2.0, out=tc).sigmoid_().mul_(2.0).sub_(1.0)  # tanh(c') = 2 sigmoid(2c') - 1
            torch.mul(o, tc, out=h_out[ls, :, bs])
            if gates_out is not None and bc != b:
                gates_out[ls, :, bs] = z


#: save the gate activations for backward (instead of recomputing them) up to this many bytes
#: per tick; meta-training at small scale then skips the recompute, large batches stay lean
SAVE_GATES_BYTES = 32 << 20


class LSTMTick(torch.autograd.Function):
    """A differentiable tick with a chunked forward and a hand-written chunked backward.

    The graph keeps the input state, tanh(c') and -- when they fit in ``SAVE_GATES_BYTES`` --
    the gate activations; otherwise the backward recomputes the gates chunk by chunk, so a
    lifetime's graph never holds [L, 4N, B, A] activations per tick at large scale.
    """

    @staticmethod
    def forward(ctx, h, c, u, gate_a, gate_b, clip):
        n = h.shape[1]
        u2, ga2, gb2 = _doubled_g(u, gate_a, gate_b, n)
        h_out, c_out, tc = torch.empty_like(h), torch.empty_like(c), torch.empty_like(c)
        keep = 4 * h.numel() * h.element_size() <= SAVE_GATES_BYTES
        gates = torch.empty(h.shape[0], 4 * n, *h.shape[2:], dtype=h.dtype, device=h.device) if keep else None
        _tick_chunks(h, c, h_out, c_out, u2, ga2, gb2, clip, gates_out=gates, tanh_out=tc)
        ctx.save_for_backward(h, c, u, gate_a, gate_b, c_out, tc, *([gates] if keep else []))
        ctx.clip, ctx.keep = clip, keep
        return h_out, c_out

    @staticmethod
    def backward(ctx, dh_out, dc_out):
        h, c, u, gate_a, gate_b, c_out, tanh_c, *saved = ctx.saved_tensors
        gates = saved[0] if ctx.keep else None
        clip = ctx.clip
        L, n, b, a = h.shape
        if gates is None:
            u2, ga2, gb2 = _doubled_g(u, gate_a, gate_b, n)
        dh, dc = torch.empty_like(h), torch.empty_like(c)
        du = torch.zeros_like(u)
        dga = torch.zeros_like(gate_a)
        dgb = torch.empty_like(gate_b)
        size = min(CHUNK_CONNECTIONS + a * b, L * a * b)
        zbuf = torch.empty(4 * n * size, dtype=h.dtype, device=h.device)
        dzbuf = torch.empty(4 * n * size, dtype=h.dtype, device=h.device)
        tbuf = torch.empty(2 * n * size, dtype=h.dtype, device=h.device)
        ut = u.t()
        for ls, bs in _chunks(L, b, a, CHUNK_CONNECTIONS):
            hc, cc, co, tc = h[ls, :, bs], c[ls, :, bs], c_out[ls, :, bs], tanh_c[ls, :, bs]
            Lc, bc = hc.shape[0], hc.shape[2]
            m = Lc * n * bc * a
            if gates is not None:
                z = gates[ls, :, bs]
            else:
                z = zbuf[: 4 * m].view(Lc, 4 * n, bc, a)
                _gates_into(z, u2, hc, ga2[ls], gb2[ls, :, bs])
            i, f, s, o = z.split(n, dim=1)  # s = sigmoid(2 z_g), so tanh(z_g) = 2 s - 1
            dz = dzbuf[: 4 * m].view(Lc, 4 * n, bc, a)
            di, df, dg, do = dz.split(n, dim=1)
            t1 = tbuf[:m].view(Lc, n, bc, a)
            t2 = tbuf[m : 2 * m].view(Lc, n, bc, a)
            dhc, dct = dh_out[ls, :, bs], dc[ls, :, bs]
            # output gate: d z_o = dh * tanh(c') * o (1 - o)
            torch.mul(dhc, tc, out=do)
            do.mul_(torch.addcmul(o, o, o, value=-1.0, out=t1))
            # total gradient of c': dc_out + dh * o * (1 - tanh(c')^2), held in dc's slot
            torch.mul(tc, tc, out=t1).neg_().add_(1.0).mul_(o).mul_(dhc)
            torch.add(dc_out[ls, :, bs], t1, out=dct)
            if clip is not None:
                dct.mul_(co.abs() < clip)
            torch.mul(s, 2.0, out=t1).sub_(1.0)  # g = tanh(z_g)
            torch.mul(dct, t1, out=di).mul_(torch.addcmul(i, i, i, value=-1.0, out=t2))
            torch.mul(dct, i, out=dg).mul_(t1.square_().neg_().add_(1.0))
            torch.mul(dct, cc, out=df).mul_(torch.addcmul(f, f, f, value=-1.0, out=t2))
            dct.mul_(f)  # d c = dc' * f
            dzf = dz.view(Lc, 4 * n, bc * a)
            if bc == b:  # whole lifetimes: write straight into dh
                torch.matmul(ut, dzf, out=dh[ls].view(Lc, n, b * a))
            else:
                dh[ls, :, bs] = torch.matmul(ut, dzf).view(Lc, n, bc, a)
            du += torch.matmul(dzf, hc.reshape(Lc, n, bc * a).transpose(1, 2)).sum(0)
            dga[ls] += dz.sum(dim=2)
            dgb[ls, :, bs] = dz.sum(dim=3)
        return dh, dc, du, dga, dgb, None


def _is_transformed(*tensors: Tensor) -> bool:
    """True under torch.func transforms (vmap/grad), where the fused paths do not apply."""
    is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return any(is_wrapped(t) for t in tensors)


def gate_inputs(w_fwd: Tensor, m_in: Tensor) -> Tensor:
    """The input part of the gates, w_fwd m_a for every input a: [L, 4N, A] from m_in [L, A, M]."""
    return torch.matmul(w_fwd, m_in.transpose(-1, -2))


def lstm_ticks(
    h: Tensor,
    c: Tensor,
    u: Tensor,
    w_fwd: Tensor,
    m_in: Tensor,
    gate_b: Tensor,
    clip: float | None,
    ticks: int = 1,
    mean_inputs: bool = False,
) -> tuple[Tensor, ...]:
    """``ticks`` ticks of every sub-LSTM with the same inputs; returns the new (h, c), and with
    ``mean_inputs`` also the new h averaged over the inputs, [L, N, B] (what a forward message
    reads; the native tick sums it while storing h).

    The gates read w_fwd [4N, M] times the forward message m_in [L, A, M] arriving at each
    input, plus gate_b [L, 4N, B] (backward message part and bias) of each output.

    Picks the path: the reference under torch.func transforms, the autograd Function when a
    gradient is needed, else the native tick where it applies (it forms the input part of the
    gates per block, never as an [L, 4N, A] tensor), else the chunked in-place path, which
    allocates the new state once and updates it in place for the remaining ticks (the
    caller's state is never modified).
    """
    if _is_transformed(h, c, u, w_fwd, m_in, gate_b):
        gate_a = gate_inputs(w_fwd, m_in)
        for _ in range(ticks):
            h, c = lstm_tick_reference(h, c, u, gate_a, gate_b, clip)
    elif torch.is_grad_enabled() and any(t.requires_grad for t in (h, c, u, w_fwd, m_in, gate_b)):
        gate_a = gate_inputs(w_fwd, m_in)
        for _ in range(ticks):
            h, c = LSTMTick.apply(h, c, u, gate_a, gate_b, clip)
    elif USE_NATIVE and vsml_native.supports(h, m_in, c, u, w_fwd, gate_b):
        return vsml_native.lstm_ticks(h, c, u, w_fwd, m_in, gate_b, clip, ticks, mean_inputs)
    else:
        n = h.shape[1]
        u2, ga2, gb2 = _doubled_g(u, gate_inputs(w_fwd, m_in), gate_b, n)
        h_out, c_out = torch.empty_like(h), torch.empty_like(c)
        _tick_chunks(h, c, h_out, c_out, u2, ga2, gb2, clip, ticks=ticks)
        h, c = h_out, c_out
    return (h, c, h.mean(dim=3)) if mean_inputs else (h, c)

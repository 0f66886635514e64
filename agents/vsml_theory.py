"""VSML's simple-RNN form and the equivalent standard RNN (the paper's Theorem 1).

VSML can be read as one big RNN whose weight matrix is sparse and shared. Take a single layer
whose A*A sub-RNNs (state s_ab of size N, shared weights W [N, N] and C [N, N]) read, as their
forward message, the summed states of the sub-RNNs that feed input a -- the layer's own output
fed back, m_a = sum_c s_ca -- and update

    s_ab <- tanh(s_ab W + m_a C).

Stacking all states into one vector S of size A*A*N (index (a, b, n)) gives a standard RNN
S <- tanh(S W~) with

    W~[(a, b, :), (a, b, :)] += W        (each sub-RNN's own recurrence: block diagonal)
    W~[(c, a, :), (a, b, :)] += C        (s_ca feeds every sub-RNN s_ab of input a)

so W~ has (A*A*N)^2 entries but only 2*N*N distinct values. These two functions compute both
sides; the tests check they agree, which pins down the message-passing arithmetic the VSML
agent uses (states aggregated over one index, then a shared linear map).
"""

from __future__ import annotations

import torch
from torch import Tensor


def simple_rnn_form_step(s: Tensor, w: Tensor, c: Tensor) -> Tensor:
    """One step of the message-passing form; s is [A, A, N] (sub-RNN (a, b) at s[a, b])."""
    m = s.sum(dim=0)  # m_a = sum_c s[c, a]: the messages arriving at input a
    return torch.tanh(s @ w + (m @ c)[:, None, :])


def dense_equivalent(w: Tensor, c: Tensor, a: int) -> Tensor:
    """The standard-RNN weight matrix W~ [(A*A*N), (A*A*N)] of the simple-RNN form."""
    n = w.shape[0]
    big = torch.zeros(a, a, n, a, a, n, dtype=w.dtype)
    idx = torch.arange(a)
    big[idx[:, None], idx[None, :], :, idx[:, None], idx[None, :], :] += w  # (a,b) -> (a,b)
    for src_b in range(a):  # s[c, src_b] feeds every s[src_b, b]
        big[:, src_b, :, src_b, :, :] += c[None, :, None, :]
    return big.reshape(a * a * n, a * a * n)

"""Fast Weight Memory baseline: an LSTM controller programming a 3-tensor of fast weights.

After Schlag, Munkhdalai & Schmidhuber (2021), "Learning Associative Inference Using Fast
Weight Memory" (FWM), as used for the FWM baseline of VSML (Kirsch & Schmidhuber 2021). A
slow LSTM reads the online observation; at every step it writes one association into a fast
weight tensor F [s, s, s] with the delta rule and then reads from F with a few chained
queries; the read-out and the LSTM output together give the logits.

One step (learn from step t-1, then predict for x_t)::

    h, c     = LSTMCell([x_t, err_prev, y_prev], (h, c))
    # write: keys k1, k2 and value v in R^s, write strength beta in (0, 1)
    k1, k2, v = tanh(W_k1 h), tanh(W_k2 h), tanh(W_v h);  beta = sigmoid(w_beta . h)
    v_old    = F . (k1 (x) k2)                                # what the keys address now
    F        = F + beta (k1 (x) k2) (x) (v - v_old)           # delta rule
    F        = F / max(1, ||F||_Frobenius)                    # norm bound
    # read: N_r chained queries
    n_0      = W_n h;  e_i = W_e_i h
    n_i      = LayerNorm(F . (n_{i-1} (x) e_i)),  i = 1..N_r
    logits_t = 100 * tanh(W_o [h, n_Nr] / 100)

Contracting F [a, b, v] with (k1 (x) k2) on its first two axes gives a value vector; with
unit-norm keys and F = 0, writing v with beta = 1 and reading with the same keys returns v
exactly (while ||v|| <= 1, so the norm bound does not rescale). ``key_norm="l2"`` makes the
keys unit-norm (after the tanh) so the delta rule replaces the old value exactly;
``key_norm="tanh"`` (default) keeps the FWM paper's plain tanh keys. The LayerNorm of the read
has no affine parameters (the output layer absorbs the scale of the last read).

The LSTM state h, c is "activation"; F is "weight" (zeros at the start of a lifetime).
The controller's arithmetic is the plain-matmul LSTM of :mod:`rulegym.agents.meta_rnn`, so the
agent vmaps over a population of parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rulegym.agents.base import Agent, Obs, State
from rulegym.agents.base import bound_logits, check_positive_int
from rulegym.agents.meta_rnn import lstm_cell
from rulegym.agents.registry import register_agent

KEY_NORMS = ("tanh", "l2")


def _address(k1: Tensor, k2: Tensor) -> Tensor:
    """The outer product k1 (x) k2 of [B, s] keys, flattened: [B, s * s]."""
    return (k1.unsqueeze(2) * k2.unsqueeze(1)).flatten(1)


def fwm_lookup(F: Tensor, k1: Tensor, k2: Tensor) -> Tensor:
    """Contract F [B, s, s, s] with the address k1 (x) k2 ([B, s] each): a value [B, s].

    One batched matmul of the address [B, 1, s*s] with a view of F as [B, s*s, s] (a copy only
    if F is not contiguous; an einsum over the three operands copied F into a permuted layout
    first, which was most of the agent's time).
    """
    B, s = k1.shape
    return torch.bmm(_address(k1, k2).unsqueeze(1), F.reshape(B, s * s, s)).view(B, s)


def fwm_write(F: Tensor, k1: Tensor, k2: Tensor, v: Tensor, beta: Tensor) -> Tensor:
    """Delta-rule write of value v at address k1 (x) k2 with strength beta [B, 1], then the norm bound.

    F + beta (k1 (x) k2) (x) (v - F . (k1 (x) k2)), divided by max(1, ||.||_F) per lifetime. The
    rank-one update is one ``baddbmm`` onto a view of F as [B, s*s, s], into a new tensor (F
    itself is not changed).
    """
    B, s = k1.shape
    a = _address(k1, k2).unsqueeze(2)  # [B, s*s, 1]
    Fm = F.reshape(B, s * s, s)
    v_old = torch.bmm(a.transpose(1, 2), Fm).view(B, s)
    G = torch.baddbmm(Fm, a, (beta * (v - v_old)).unsqueeze(1))
    inv_norm = G.flatten(1).norm(dim=1).clamp(min=1.0).reciprocal()
    return (G * inv_norm.view(B, 1, 1)).view(B, s, s, s)


class FastWeightMemory(Agent):
    """LSTM controller + fast-weight 3-tensor with delta-rule writes (see module doc).

    Options:
        hidden: LSTM units (default 128).
        fw_size: s, the side of the fast-weight tensor F [s, s, s] (default 32).
        n_reads: chained read queries N_r (default 3).
        key_norm: "tanh" (default, the FWM paper's keys) or "l2" (tanh then unit L2 norm,
            so a write replaces exactly what the keys addressed).
    """

    state_kinds = {"h": "activation", "c": "activation", "F": "weight"}

    def __init__(
        self,
        x_dim: int,
        n_classes: int,
        hidden: int = 128,
        fw_size: int = 32,
        n_reads: int = 3,
        key_norm: str = "tanh",
    ):
        super().__init__(x_dim, n_classes)
        self.hidden = check_positive_int("hidden", hidden)
        self.fw_size = check_positive_int("fw_size", fw_size)
        self.n_reads = check_positive_int("n_reads", n_reads)
        if key_norm not in KEY_NORMS:
            raise ValueError(f"key_norm must be one of {KEY_NORMS}, got {key_norm!r}.")
        self.key_norm = key_norm
        self.in_dim = self.x_dim + 2 * self.n_classes
        s = self.fw_size
        self.cell = nn.LSTMCell(self.in_dim, self.hidden)
        self.write = nn.Linear(self.hidden, 3 * s + 1)  # k1, k2, v, beta
        self.read = nn.Linear(self.hidden, s * (1 + self.n_reads))  # n_0, e_1..e_Nr
        self.readout = nn.Linear(self.hidden + s, self.n_classes)

    def initial_state(self, batch_size: int, generator: torch.Generator | None = None) -> State:
        """Zero LSTM state and an empty fast-weight tensor for ``batch_size`` fresh lifetimes."""
        batch_size = check_positive_int("batch_size", batch_size)
        kw = {"device": self.readout.weight.device, "dtype": self.readout.weight.dtype}
        s = self.fw_size
        return {
            "h": torch.zeros(batch_size, self.hidden, **kw),
            "c": torch.zeros(batch_size, self.hidden, **kw),
            "F": torch.zeros(batch_size, s, s, s, **kw),
        }

    def _keys(self, k: Tensor) -> Tensor:
        k = torch.tanh(k)
        if self.key_norm == "l2":
            k = k / k.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        return k

    def _step(self, obs: Obs, state: State) -> tuple[Tensor, State]:
        s = self.fw_size
        u = torch.cat([obs["x"], obs["err_prev"], obs["y_prev"]], dim=-1)
        h, c = lstm_cell(self.cell, u, state["h"], state["c"])
        k1, k2, v, beta = self.write(h).split([s, s, s, 1], dim=-1)
        F = fwm_write(state["F"], self._keys(k1), self._keys(k2), torch.tanh(v), torch.sigmoid(beta))
        queries = self.read(h).split(s, dim=-1)
        n = queries[0]
        for e in queries[1:]:  # n_reads is a fixed option, not data-dependent
            n = nn.functional.layer_norm(fwm_lookup(F, n, e), (s,))
        logits = bound_logits(self.readout(torch.cat([h, n], dim=-1)))
        return logits, {"h": h, "c": c, "F": F}

    def extra_repr(self) -> str:
        return (
            f"x_dim={self.x_dim}, n_classes={self.n_classes}, hidden={self.hidden}, fw_size={self.fw_size}, "
            f"n_reads={self.n_reads}, key_norm={self.key_norm!r}"
        )


register_agent("fwm")(FastWeightMemory)

"""Meta RNN baseline: an LSTM that learns inside its activations (Hochreiter et al. 2001).

The simplest neural meta learner, and the baseline VSML (Kirsch & Schmidhuber 2021) builds
on: a recurrent network sees, at every step, the current input together with the label and
the error of its previous prediction, and is meta-trained so that its *activations* implement
a learning algorithm. Nothing but h and c changes within a lifetime.

One step (the online protocol: learn from step t-1, then predict for x_t)::

    u_t          = [x_t, err_prev, y_prev]                  # in this order
    h, c         = LSTMCell(u_t, (h, c))                    # `ticks` times, same u_t
    logits_t     = 100 * tanh(W_out h / 100)

Registered as ``meta_rnn`` and, with Gregor's (2020, "Finding online neural update rules by
learning to remember") LSTM baseline sizes for the character stream, as ``lstm16`` and
``lstm128`` (identical agents with ``hidden`` defaulting to 16 / 128).

The LSTM arithmetic is written out (:func:`lstm_cell`) rather than calling the fused
``torch.lstm_cell`` so that ``torch.func.vmap`` over a population of parameters batches it with
plain matmuls; the parameters still live in a ``torch.nn.LSTMCell`` (same names, same gate
order i, f, g, o, same initialisation), so weights load interchangeably.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rulegym.agents.base import Agent, Obs, State, bound_logits, check_positive_int, check_flag
from rulegym.agents.registry import register_agent

def lstm_cell(cell: nn.LSTMCell, u: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM update with the weights of ``cell``, equal to ``cell(u, (h, c))``.

    Written with ``F.linear`` so vmap over stacked parameters (functional_call) batches it.
    """
    gates = nn.functional.linear(u, cell.weight_ih, cell.bias_ih) + nn.functional.linear(h, cell.weight_hh, cell.bias_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    return h_new, c_new


class MetaRNN(Agent):
    """LSTM meta learner: input [x_t, err_prev, y_prev], linear readout, bounded logits.

    Options:
        hidden: LSTM units (default 128).
        ticks: LSTM updates per input (default 1); with 2 the cell runs twice on the same
            input before the readout, giving the network a little more "thinking" per step.
        learn_init: learn the initial (h, c) as meta-parameters (default False: zeros, as the
            original Meta RNN). With a learned initial state, :meth:`initial_state` expands
            this module's own h0/c0; a population run must build its initial state from the
            stacked ``h0``/``c0`` itself.
    """

    state_kinds = {"h": "activation", "c": "activation"}

    def __init__(self, x_dim: int, n_classes: int, hidden: int = 128, ticks: int = 1, learn_init: bool = False):
        super().__init__(x_dim, n_classes)
        self.hidden = check_positive_int("hidden", hidden)
        self.ticks = check_positive_int("ticks", ticks)
        self.learn_init = check_flag("learn_init", learn_init)
        self.in_dim = self.x_dim + 2 * self.n_classes
        self.cell = nn.LSTMCell(self.in_dim, self.hidden)
        self.readout = nn.Linear(self.hidden, self.n_classes)
        if self.learn_init:
            self.h0 = nn.Parameter(torch.zeros(self.hidden))
            self.c0 = nn.Parameter(torch.zeros(self.hidden))

    def initial_state(self, batch_size: int, generator: torch.Generator | None = None) -> State:
        """Zero (or learned) h and c for ``batch_size`` fresh lifetimes; no randomness needed."""
        batch_size = check_positive_int("batch_size", batch_size)
        if self.learn_init:
            return {"h": self.h0.expand(batch_size, -1).clone(), "c": self.c0.expand(batch_size, -1).clone()}
        p = self.readout.weight
        zeros = torch.zeros(batch_size, self.hidden, device=p.device, dtype=p.dtype)
        return {"h": zeros, "c": zeros.clone()}

    def _step(self, obs: Obs, state: State) -> tuple[Tensor, State]:
        u = torch.cat([obs["x"], obs["err_prev"], obs["y_prev"]], dim=-1)
        h, c = state["h"], state["c"]
        for _ in range(self.ticks):  # a fixed option, not data-dependent
            h, c = lstm_cell(self.cell, u, h, c)
        return bound_logits(self.readout(h)), {"h": h, "c": c}

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}, n_classes={self.n_classes}, hidden={self.hidden}, ticks={self.ticks}, learn_init={self.learn_init}"


register_agent("meta_rnn")(MetaRNN)


@register_agent("lstm16")
def lstm16(x_dim: int, n_classes: int, hidden: int = 16, ticks: int = 1, learn_init: bool = False) -> MetaRNN:
    """Gregor's (2020) small LSTM baseline for the character stream: a Meta RNN with 16 units."""
    return MetaRNN(x_dim, n_classes, hidden=hidden, ticks=ticks, learn_init=learn_init)


@register_agent("lstm128")
def lstm128(x_dim: int, n_classes: int, hidden: int = 128, ticks: int = 1, learn_init: bool = False) -> MetaRNN:
    """Gregor's (2020) large LSTM baseline for the character stream: a Meta RNN with 128 units."""
    return MetaRNN(x_dim, n_classes, hidden=hidden, ticks=ticks, learn_init=learn_init)

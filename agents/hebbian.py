"""Hebbian fast weights baseline: one plastic layer with differentiable plasticity.

After Miconi, Stanley & Clune (2018), "Differentiable plasticity: training plastic neural
networks with backpropagation", as used for the Hebbian baseline of VSML (Kirsch &
Schmidhuber 2021). Every connection has a slow weight W_ij and a plasticity coefficient
C_ij (Miconi's alpha), both meta-learned, and a fast Hebbian trace F_ij that lives in the
lifetime state::

    u_t      = [x_t, err_prev, y_prev]                           # pre-synaptic input
    out_t    = u_t (W + C * F) + b                                # one plastic layer
    logits_t = 100 * tanh(out_t / 100)

The trace follows Hebb's rule with decay (Miconi 2018), clipped to [-1, 1] as in Miconi et al.
(2019, "Backpropamine")::

    F <- clip((1 - eta) F + eta pre (x) post, -1, 1)              # rule="hebb" (default)

or Oja's rule, which keeps the trace bounded without clipping::

    F <- F + eta post * (pre - post * F)                         # rule="oja" (elementwise)

with a meta-learned rate eta (one scalar, or one per connection with
``eta_per_connection=True``).

Causality and the post-synaptic signal. In Miconi's one-shot experiments the plastic layer is
the output layer and, while a labelled example is shown, the output is clamped to the correct
label, so the trace binds each input pattern to its label. Online, the label of step t is
revealed only at step t+1, so the update for step t happens at the *start* of step t+1, from
the stored pre-synaptic input ``pre = u_t`` and a post-synaptic activity that now knows the
label:

- ``post="label"`` (default, Miconi's clamped output): post = y_prev, the one-hot label of
  step t. F then holds an (input -> label) association memory.
- ``post="corrected"``: post = out_t - err_prev, the layer's own output of step t moved one
  unit step along -dL/dlogits towards the label; the update then depends on what the layer
  predicted (error-driven, closer to a delta rule). Unbounded, so prefer it with the clipped
  Hebb rule.

Only after that update does the layer predict for x_t, so every prediction is made before its
label is seen. F is a "weight" state entry (zeros at the start of a lifetime); the stored
``pre`` and ``out`` are "activation" entries.

Initialisation follows Miconi's code: W, C ~ 0.01 N(0, 1), eta = 0.01, b = 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rulegym.agents.base import Agent, Obs, State, check_flag
from rulegym.agents.base import bound_logits, check_positive_int
from rulegym.agents.registry import register_agent

RULES = ("hebb", "oja")
POSTS = ("label", "corrected")


def hebb_update(F: Tensor, pre: Tensor, post: Tensor, eta: Tensor, clip: bool = True) -> Tensor:
    """Decaying Hebb rule: (1 - eta) F + eta pre (x) post, clipped to [-1, 1] when ``clip``.

    F [B, D, C], pre [B, D], post [B, C], eta broadcastable to F (scalar or [D, C]).
    """
    new = (1.0 - eta) * F + eta * (pre.unsqueeze(-1) * post.unsqueeze(-2))
    return new.clamp(-1.0, 1.0) if clip else new


def oja_update(F: Tensor, pre: Tensor, post: Tensor, eta: Tensor) -> Tensor:
    """Oja's rule per connection, as Miconi et al. (2018) use it: F + eta post (pre - post F)."""
    post_ = post.unsqueeze(-2)
    return F + eta * post_ * (pre.unsqueeze(-1) - post_ * F)


class HebbianFastWeights(Agent):
    """One plastic linear layer from [x_t, err_prev, y_prev] to the logits (see module doc).

    Options:
        rule: "hebb" (default) or "oja".
        post: "label" (default: the clamped one-hot label) or "corrected" (previous output
            minus the previous error); see the module docstring.
        eta_per_connection: one learned rate per connection instead of one scalar (default False).
        clip: clip the Hebb trace to [-1, 1] (default True; Oja's rule is never clipped).
        eta_init: initial learning rate of the trace (default 0.01, as Miconi).
    """

    state_kinds = {"F": "weight", "pre": "activation", "out": "activation"}

    def __init__(
        self,
        x_dim: int,
        n_classes: int,
        rule: str = "hebb",
        post: str = "label",
        eta_per_connection: bool = False,
        clip: bool = True,
        eta_init: float = 0.01,
    ):
        super().__init__(x_dim, n_classes)
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}.")
        if post not in POSTS:
            raise ValueError(f"post must be one of {POSTS}, got {post!r}.")
        if isinstance(eta_init, bool) or not isinstance(eta_init, (int, float)) or not math.isfinite(eta_init):
            raise ValueError(f"eta_init must be a finite number (the initial trace rate, e.g. 0.01), got {eta_init!r}.")
        self.rule, self.post, self.clip = rule, post, check_flag("clip", clip)
        self.eta_per_connection = check_flag("eta_per_connection", eta_per_connection)
        self.in_dim = self.x_dim + 2 * self.n_classes
        d, c = self.in_dim, self.n_classes
        self.w = nn.Parameter(0.01 * torch.randn(d, c))
        self.alpha = nn.Parameter(0.01 * torch.randn(d, c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eta = nn.Parameter(torch.full((d, c) if self.eta_per_connection else (), float(eta_init)))

    def initial_state(self, batch_size: int, generator: torch.Generator | None = None) -> State:
        """A fresh lifetime: no Hebbian trace, no stored pre/post activity."""
        batch_size = check_positive_int("batch_size", batch_size)
        kw = {"device": self.w.device, "dtype": self.w.dtype}
        return {
            "F": torch.zeros(batch_size, self.in_dim, self.n_classes, **kw),
            "pre": torch.zeros(batch_size, self.in_dim, **kw),
            "out": torch.zeros(batch_size, self.n_classes, **kw),
        }

    def _step(self, obs: Obs, state: State) -> tuple[Tensor, State]:
        # 1. learn: the label (and error) of the previous step are now known
        if self.post == "label":
            post = obs["y_prev"]
        else:
            post = state["out"] - obs["err_prev"]
        if self.rule == "hebb":
            F = hebb_update(state["F"], state["pre"], post, self.eta, self.clip)
        else:
            F = oja_update(state["F"], state["pre"], post, self.eta)
        # 2. predict for x_t with the updated plastic weights
        u = torch.cat([obs["x"], obs["err_prev"], obs["y_prev"]], dim=-1)
        out = torch.einsum("bd,bdc->bc", u, self.w + self.alpha * F) + self.bias
        return bound_logits(out), {"F": F, "pre": u, "out": out}

    def extra_repr(self) -> str:
        return (
            f"x_dim={self.x_dim}, n_classes={self.n_classes}, rule={self.rule!r}, post={self.post!r}, "
            f"eta_per_connection={self.eta_per_connection}, clip={self.clip}"
        )


register_agent("hebbian")(HebbianFastWeights)

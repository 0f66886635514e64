"""The network and learning rule a VSML cloned from backprop implements, computed exactly.

Each layer maps its inputs x_a to y_b = mean_a tanh(x_a) w_ab + b_b (VSML averages the forward
messages over a; the tanh is applied by the receiving layer). After each prediction the error
e = p - onehot(y) (the env's ``err_prev``) enters at the output and runs backward:
  delta_a = mean_b e_b w_ab (1 - tanh(x_a)^2)    (what the layer sends down)
  w_ab   <- w_ab - lr tanh(x_a) e_b
  b_b    <- b_b  - lr e_b
with x the inputs the layer saw in the forward pass and delta computed with the weights before
the update. This is gradient descent on the summed loss, with a step size that differs per
layer. Write A_k, B_k for layer k's fan-in and fan-out (B_k = A_{k+1}). The forward mean puts
1/A_k into the gradient of layer k's weights; the true gradient at its inputs is
sum_b e_b w_ab (1 - tanh(x_a)^2) / A_k, and delta divides by B_k instead, so the delta a
layer sends down is A_k/B_k times the true gradient, and every layer below inherits that
factor. Layer k's weights thus move lr * A_k * c_k times their gradient and its biases
lr * c_k times theirs, with c_k the product of A_j/B_j over the layers j above k (1 for the
last layer): lr * A_1 for the output weights of x (A_0) -> A_1 -> B, and lr * A_0 * A_1 / B
for the hidden ones. It is what :mod:`rulegym.learners.cloning` trains VSML's sub-LSTMs to do,
so ``tanh_backprop`` with the same lr and initial weights is the exact reference a cloned rule
is compared with.

Weights and biases live in the state ([lifetimes, outputs, inputs]); the only meta-parameter is
the log learning rate. Vectorised over lifetimes; a loop over layers only.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from rulegym.agents.base import Agent, Obs, State, bound_logits, check_layer_sizes, check_positive_int, check_positive_number, check_flag
from rulegym.agents.registry import register_agent


def layer_forward(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """y [S, B] = mean_a tanh(x_a) w_ab + b_b for inputs x [S, A], weights w [S, B, A], biases b [S, B]."""
    return torch.einsum("sba,sa->sb", w, torch.tanh(x)) / x.shape[1] + b


def layer_backward(
    x: Tensor, e: Tensor, w: Tensor, b: Tensor, lr: Tensor | float, bound: float | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """One layer's backprop for the errors e [S, B] at its outputs, given the inputs x [S, A] of
    its forward pass: (delta [S, A] sent down, computed with the weights before the update,
    the new weights, the new biases). With ``bound``, the new weights and biases are clipped to
    [-bound, bound] (projected gradient descent onto a box)."""
    t = torch.tanh(x)
    delta = torch.einsum("sb,sba->sa", e, w) / e.shape[1] * (1 - t * t)
    w_new, b_new = w - lr * e[:, :, None] * t[:, None, :], b - lr * e
    if bound is not None:
        w_new, b_new = w_new.clamp(-bound, bound), b_new.clamp(-bound, bound)
    return delta, w_new, b_new


@register_agent("tanh_backprop")
class TanhBackprop(Agent):
    """Online backprop on a mean-of-tanh network (see the module docstring).

    Args:
        hidden: hidden layer sizes, e.g. ``(32,)`` or ``32`` (default none: one layer x_dim -> n_classes).
        lr: the step size of the update rule above (0.3).
        init_weight_std: initial weights ~ N(0, std^2), clipped to +-weight_bound (1.0).
        weight_bound: the clip of the initial weights (3.96: what a cloned VSML's state
            can hold, 0.99 times its weight scale 4).
        logit_scale: the logits are this times the last layer's output (the update rule is
            unchanged, and the error passed down is the unscaled one, so it is gradient descent
            with every layer's step divided by it); the same weights then give larger logits.
        bound_updates: also clip every updated weight and bias to +-weight_bound (projected
            gradient descent), so a lifetime's weights stay in the range a clone can hold.
    """

    def __init__(
        self,
        x_dim: int,
        n_classes: int,
        *,
        hidden: Sequence[int] = (),
        lr: float = 0.3,
        init_weight_std: float = 1.0,
        weight_bound: float = 3.96,
        bound_updates: bool = False,
        logit_scale: float = 1.0,
    ):
        super().__init__(x_dim, n_classes)
        check_positive_number("lr", lr)
        if not (init_weight_std >= 0 and math.isfinite(init_weight_std)):
            raise ValueError(f"init_weight_std must be a finite number >= 0, got {init_weight_std!r}.")
        self.sizes = (self.x_dim, *check_layer_sizes("hidden", hidden), self.n_classes)
        self.n_layers = len(self.sizes) - 1
        self.log_lr = nn.Parameter(torch.tensor(math.log(lr)))
        self.init_weight_std = float(init_weight_std)
        self.weight_bound = check_positive_number("weight_bound", weight_bound)
        self.bound_updates = check_flag("bound_updates", bound_updates)
        self.logit_scale = check_positive_number("logit_scale", logit_scale)
        self.state_kinds = {}
        for k in range(self.n_layers):
            self.state_kinds.update({f"w{k}": "weight", f"b{k}": "weight", f"x{k}": "activation"})

    def initial_state(self, batch_size: int, generator: torch.Generator | None = None) -> State:
        batch_size = check_positive_int("batch_size", batch_size)
        p = self.log_lr
        state: State = {}
        for k in range(self.n_layers):
            a, b = self.sizes[k], self.sizes[k + 1]
            w = torch.randn(batch_size, b, a, generator=generator, dtype=p.dtype) * self.init_weight_std
            state[f"w{k}"] = w.clamp(-self.weight_bound, self.weight_bound).to(p.device)
            state[f"b{k}"] = torch.zeros(batch_size, b, dtype=p.dtype, device=p.device)
            state[f"x{k}"] = torch.zeros(batch_size, a, dtype=p.dtype, device=p.device)
        return state

    def _step(self, obs: Obs, state: State) -> tuple[Tensor, State]:
        lr = self.log_lr.exp()
        new: State = {}
        e = obs["err_prev"]
        for k in reversed(range(self.n_layers)):
            e, new[f"w{k}"], new[f"b{k}"] = layer_backward(
                state[f"x{k}"], e, state[f"w{k}"], state[f"b{k}"], lr, self.weight_bound if self.bound_updates else None
            )
        a = obs["x"]
        for k in range(self.n_layers):
            new[f"x{k}"] = a
            a = layer_forward(a, new[f"w{k}"], new[f"b{k}"])
        return bound_logits(self.logit_scale * a), new

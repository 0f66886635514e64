"""Nearest class mean: a non-parametric few-shot baseline, neither trained nor meta-trained.

Each lifetime keeps, per class, the sum and the count of the inputs labelled with it so far
(the label of step t arrives as ``y_prev`` at step t+1, so the input of step t is kept in the
state until then). It predicts the class whose mean input is nearest::

    mu_c     = sum of the inputs labelled c / their count
    logit_c  = -mean_a (x_a - mu_ca)^2 / temperature          (classes seen so far)
    logit_c  = min over the seen classes' logits                (classes not seen yet)

so an unseen class is never preferred to a seen one, and before any label every logit is 0.
A step without a label (``y_prev`` all zeros) adds nothing. This is the rule a VSML connection
(a, b) could run with its own inputs alone -- keep the running mean mu_ab of x_a over the
examples of class b and send -(x_a - mu_ab)^2 forward -- and it is the reference for what an
online learner can reach from a few labelled examples per class without any learning of its
own: on the ``first100`` preset's streams it predicts the 100th example of MNIST and
Fashion-MNIST about as well as the shipped ``vsml_mnist_long`` (see the README).

The only meta-parameter is the log temperature, which scales the logits (so the loss, not the
predictions). Vectorised over lifetimes and classes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rulegym.agents.base import Agent, Obs, State, bound_logits, check_positive_int, check_positive_number
from rulegym.agents.registry import register_agent


@register_agent("class_means")
class ClassMeans(Agent):
    """Nearest class mean (see the module docstring).

    Args:
        temperature: the logits are minus the mean squared distance divided by this (1.0).
    """

    def __init__(self, x_dim: int, n_classes: int, *, temperature: float = 1.0):
        super().__init__(x_dim, n_classes)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(check_positive_number("temperature", temperature))))
        self.state_kinds = {"sums": "weight", "counts": "weight", "x_prev": "activation"}

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}, n_classes={self.n_classes}, temperature={self.log_temperature.exp().item():.4g}"

    def initial_state(self, batch_size: int, generator: torch.Generator | None = None) -> State:
        batch_size = check_positive_int("batch_size", batch_size)
        p = self.log_temperature
        zeros = dict(dtype=p.dtype, device=p.device)
        return {
            "sums": torch.zeros(batch_size, self.n_classes, self.x_dim, **zeros),
            "counts": torch.zeros(batch_size, self.n_classes, **zeros),
            "x_prev": torch.zeros(batch_size, self.x_dim, **zeros),
        }

    def _step(self, obs: Obs, state: State) -> tuple[Tensor, State]:
        y, x = obs["y_prev"], obs["x"]
        sums = state["sums"] + y[:, :, None] * state["x_prev"][:, None, :]
        counts = state["counts"] + y
        seen = counts > 0
        means = sums / counts.clamp(min=1.0)[:, :, None]
        distance = ((x[:, None, :] - means) ** 2).mean(dim=-1)  # [B, C]
        logits = -distance / self.log_temperature.exp()
        floor = torch.where(seen, logits, torch.full_like(logits, math.inf)).amin(dim=1, keepdim=True)
        floor = torch.where(seen.any(dim=1, keepdim=True), floor, torch.zeros_like(floor))
        logits = torch.where(seen, logits, floor)
        return bound_logits(logits), {"sums": sums, "counts": counts, "x_prev": x}

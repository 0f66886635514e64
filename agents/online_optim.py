"""Online SGD and online Adam: the hand-designed learning rules every learned rule is compared with.

Each lifetime owns its own network (a linear model or a one-hidden-layer tanh MLP) and its own
optimiser state, all kept in the agent state with a leading lifetime axis, so ``B`` lifetimes
train ``B`` independent networks in one batch (``torch.bmm``; no loop over lifetimes). The
network learns from one example per step, in the order the protocol prescribes: at step ``t``
it first takes an optimiser step on CE(logits_{t-1}, y_{t-1}) and then predicts for ``x_t``.

The gradient of that loss is rebuilt from the error the env reveals, ``err_prev = dL/dlogits``,
and the previous input and hidden activations, which the state keeps ("activation" entries);
weights and optimiser moments are "weight" entries. Updates reproduce ``torch.optim.SGD``
(with optional momentum) and ``torch.optim.Adam`` (bias correction included) step for step.
A lifetime whose ``y_prev`` is all zero (no label has arrived: the first step of a lifetime, or
the first step after its activations were reset) takes no optimiser step: its weights and
optimiser state (momentum buffers, moments, step count) stay exactly as they were.

The only meta-parameter is the log learning rate (``log_lr``, an ``nn.Parameter``), so a
learner can tune the baseline by gradient descent or ES like any learned rule. Gradients reach
it through the updates; the error signal itself comes from the env and is not differentiated.

Outputs are bounded like every rulegym agent's, ``logits = B * tanh(z / B)`` with
``B = LOGIT_BOUND`` (100), so actions stay inside the action space; the bound is part of the
network (its derivative is applied in the update), and it is the identity to within 1e-4
for |z| < 5.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rulegym.agents.base import Agent, Obs, State, check_fraction, check_positive_number
from rulegym.agents.registry import register_agent
from rulegym.envs.protocol import LOGIT_BOUND


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator | None, dtype, device) -> Tensor:
    """U(-bound, bound) drawn on the generator's device, then moved to the agent's device."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    out = torch.empty(shape, dtype=dtype, device=gen_device).uniform_(-bound, bound, generator=generator)
    return out.to(device)


def _affine(w: Tensor, b: Tensor, x: Tensor) -> Tensor:
    """Per-lifetime ``w @ x + b`` for w [B, out, in], x [B, in].

    Written as the row product x^T w^T: on CPU that batched GEMM is several times faster than
    the column form w @ x for these shapes.
    """
    return torch.bmm(x.unsqueeze(1), w.transpose(1, 2)).squeeze(1) + b


def _keep_where_invalid(valid: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new`` for lifetimes with a revealed label (valid 1), ``old`` unchanged for the others."""
    return torch.where(valid.view((-1,) + (1,) * (new.dim() - 1)) > 0, new, old)


def _full(grad: Tensor | tuple[Tensor, Tensor]) -> Tensor:
    """A gradient as a tensor (outer-product pairs materialised)."""
    if isinstance(grad, tuple):
        left, right = grad
        return left.unsqueeze(2) * right.unsqueeze(1)
    return grad


class OnlineOptimAgent(Agent):
    """A per-lifetime network trained online by a hand-designed optimiser (see subclasses).

    Args:
        x_dim, n_classes: input features and classes.
        hidden: width of the tanh hidden layer; 0 or None for a linear model.
        lr: initial learning rate (stored as the meta-parameter ``log_lr``).
    """

    def __init__(self, x_dim: int, n_classes: int, *, hidden: int | None = 160, lr: float = 0.01):
        super().__init__(x_dim, n_classes)
        hidden = 0 if hidden is None else hidden
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
            raise ValueError(f"hidden must be a non-negative int (0 or None: linear model), got {hidden!r}.")
        self.hidden = hidden
        self.log_lr = nn.Parameter(torch.tensor(math.log(check_positive_number("lr", lr))))
        # layer i maps fan_in -> fan_out; weights are [out, in] like nn.Linear's
        dims = [x_dim, hidden, n_classes] if hidden else [x_dim, n_classes]
        self.layer_shapes = [(dims[i + 1], dims[i]) for i in range(len(dims) - 1)]
        self.weight_names = [n for i in range(len(self.layer_shapes)) for n in (f"w{i}", f"b{i}")]
        kinds = {n: "weight" for n in self.weight_names}
        kinds.update({n: "weight" for n in self._optimizer_entries()})
        kinds["x_prev"] = "activation"
        if hidden:
            kinds["h_prev"] = "activation"
        kinds["gain_prev"] = "activation"
        self.state_kinds = kinds

    # -- what subclasses define -------------------------------------------------------------
    def _optimizer_entries(self) -> list[str]:
        """Names of the optimiser's state entries (moments, step counts)."""
        return []

    def _initial_optimizer_state(self, weights: State, batch: int) -> State:
        return {}

    def _update(self, weights: State, grads: State, opt: State, valid: Tensor, lr: Tensor) -> tuple[State, State]:
        """One optimiser step per lifetime whose ``valid`` is 1; lifetimes with ``valid`` 0 (no
        label revealed yet) keep their weights and optimiser state exactly, as a torch.optim
        optimiser that is not stepped."""
        raise NotImplementedError

    # -- the agent protocol -----------------------------------------------------------------
    @property
    def lr(self) -> Tensor:
        """The current learning rate, exp(log_lr)."""
        return self.log_lr.exp()

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}, n_classes={self.n_classes}, hidden={self.hidden}, lr={self.lr.item():.4g}"

    def initial_state(self, batch_size: int, generator: torch.Generator | None = None) -> State:
        """Fresh networks drawn per lifetime with nn.Linear's default init, zero moments and activations.

        nn.Linear's init (kaiming-uniform with a = sqrt(5)) is U(+-1/sqrt(fan_in)) for the
        weights and the same bound for the biases.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        dtype, device = self.log_lr.dtype, self.log_lr.device
        state: State = {}
        for i, (fan_out, fan_in) in enumerate(self.layer_shapes):
            bound = 1.0 / math.sqrt(fan_in)
            state[f"w{i}"] = _uniform((batch_size, fan_out, fan_in), bound, generator, dtype, device)
            state[f"b{i}"] = _uniform((batch_size, fan_out), bound, generator, dtype, device)
        state.update(self._initial_optimizer_state(state, batch_size))
        state["x_prev"] = torch.zeros(batch_size, self.x_dim, dtype=dtype, device=device)
        if self.hidden:
            state["h_prev"] = torch.zeros(batch_size, self.hidden, dtype=dtype, device=device)
        state["gain_prev"] = torch.zeros(batch_size, self.n_classes, dtype=dtype, device=device)
        return state

    def _gradients(self, state: State, err: Tensor) -> dict[str, Tensor | tuple[Tensor, Tensor]]:
        """d CE(logits_{t-1}, y_{t-1}) / d weights, per lifetime, from err_prev and kept activations.

        A weight matrix's gradient is the outer product of two vectors per lifetime; it is
        returned as that pair ``(left [B, out], right [B, in])`` so SGD can apply it with one fused
        ``addcmul`` and never materialise (or, under autograd, store) the [B, out, in] matrix.
        """
        dz = err * state["gain_prev"]  # through the output bound: dL/dz = dL/dlogits * (1 - tanh^2)
        if not self.hidden:
            return {"w0": (dz, state["x_prev"]), "b0": dz}
        h = state["h_prev"]
        dh = torch.bmm(dz.unsqueeze(1), state["w1"]).squeeze(1)  # W1^T dz, with W1 before the update
        da = dh * (1.0 - h * h)
        return {"w0": (da, state["x_prev"]), "b0": da, "w1": (dz, h), "b1": dz}

    def _predict(self, weights: State, x: Tensor) -> tuple[Tensor, State]:
        """Logits for x with each lifetime's own network, and the activations to keep."""
        keep: State = {"x_prev": x}
        a = x
        if self.hidden:
            a = torch.tanh(_affine(weights["w0"], weights["b0"], a))
            keep["h_prev"] = a
        last = len(self.layer_shapes) - 1
        z = _affine(weights[f"w{last}"], weights[f"b{last}"], a)
        y = torch.tanh(z / LOGIT_BOUND)
        keep["gain_prev"] = 1.0 - y * y
        return LOGIT_BOUND * y, keep

    def _step(self, obs: Obs, state: State) -> tuple[Tensor, State]:
        # 1 where a previous example exists (y_prev is one-hot), 0 where no label has arrived
        # (the start of a lifetime, or the first step after its activations were reset)
        valid = obs["y_prev"].sum(dim=-1).clamp(max=1.0)
        weights = {n: state[n] for n in self.weight_names}
        opt = {n: state[n] for n in self._optimizer_entries()}
        grads = self._gradients(state, obs["err_prev"])
        weights, opt = self._update(weights, grads, opt, valid, self.lr)
        logits, keep = self._predict(weights, obs["x"])
        return logits, {**weights, **opt, **keep}


@register_agent("sgd")
class OnlineSGD(OnlineOptimAgent):
    """Online SGD, one example per step, exactly as ``torch.optim.SGD`` (optional momentum).

    Default ``lr=0.01``: online updates of batch size 1 on 784 standardised pixels are large
    (the step scales with ||x||^2, about 800 on MNIST). In a sweep of 0.001..0.3 over 500-step
    MNIST lifetimes (16 lifetimes), 0.01 gave the best online accuracy for the default MLP
    (0.69) and 0.003 for the linear model (0.69; 0.65 at 0.01). Tune with the option or
    meta-learn ``log_lr``.
    """

    def __init__(
        self, x_dim: int, n_classes: int, *, hidden: int | None = 160, lr: float = 0.01, momentum: float = 0.0
    ):
        self.momentum = check_fraction("momentum", momentum)
        super().__init__(x_dim, n_classes, hidden=hidden, lr=lr)

    def _optimizer_entries(self) -> list[str]:
        return [f"buf_{n}" for n in self.weight_names] if self.momentum else []

    def _initial_optimizer_state(self, weights: State, batch: int) -> State:
        return {f"buf_{n}": torch.zeros_like(weights[n]) for n in self.weight_names} if self.momentum else {}

    def _update(self, weights, grads, opt, valid, lr):
        new_w, new_opt = {}, {}
        # plain SGD: a zero step for lifetimes without a label (w - 0 * g is w exactly, and costs
        # no extra pass over the weights); with momentum the buffer would decay and move the
        # weights, so those lifetimes keep weights and buffers as they were
        lr_b = (lr * valid).unsqueeze(1)  # [B, 1]
        for n in self.weight_names:
            g = grads[n]
            if self.momentum:
                # torch.optim.SGD: buf = g at the first step, momentum * buf + g after; zero
                # buffers make that one formula
                buf = self.momentum * opt[f"buf_{n}"] + _full(g)
                new_opt[f"buf_{n}"] = _keep_where_invalid(valid, buf, opt[f"buf_{n}"])
                new_w[n] = _keep_where_invalid(valid, weights[n] - lr * buf, weights[n])
            elif isinstance(g, tuple):  # w - lr * left (x) right, fused
                new_w[n] = torch.addcmul(weights[n], (-lr_b * g[0]).unsqueeze(2), g[1].unsqueeze(1))
            else:
                new_w[n] = weights[n] - lr_b * g
        return new_w, new_opt


@register_agent("adam")
class OnlineAdam(OnlineOptimAgent):
    """Online Adam, one example per step, exactly as ``torch.optim.Adam`` (bias correction included).

    Defaults are Adam's usual ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8`` (1e-3 was also the best
    of 1e-4..1e-2 on 500-step MNIST lifetimes, MLP and linear alike). Under autograd, BPTT
    through Adam keeps about six [B, out, in] tensors per step and weight matrix (~190 MB per
    step for 64 lifetimes of the default MLP on MNIST): truncate or checkpoint. The step count is per
    lifetime and counts only real examples (not the first step of a lifetime, which has no
    previous label), as a torch.optim.Adam that is stepped once per revealed label; on a step
    without a label the weights and moments do not change either.
    """

    def __init__(
        self,
        x_dim: int,
        n_classes: int,
        *,
        hidden: int | None = 160,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), e.g. (0.9, 0.999), got {betas!r}.")
        b1, b2 = (check_fraction("betas", b) for b in betas)
        self.betas, self.eps = (b1, b2), check_positive_number("eps", eps)
        super().__init__(x_dim, n_classes, hidden=hidden, lr=lr)

    def _optimizer_entries(self) -> list[str]:
        return [f"{m}_{n}" for n in self.weight_names for m in ("m", "v")] + ["step"]

    def _initial_optimizer_state(self, weights: State, batch: int) -> State:
        out = {f"{m}_{n}": torch.zeros_like(weights[n]) for n in self.weight_names for m in ("m", "v")}
        out["step"] = torch.zeros(batch, dtype=weights["w0"].dtype, device=weights["w0"].device)
        return out

    def _update(self, weights, grads, opt, valid, lr):
        b1, b2 = self.betas
        step = opt["step"] + valid
        # bias corrections in float64 like torch.optim.Adam's Python floats (1 - 0.999**t cancels
        # badly in float32); max(step, 1) keeps the unused branch at t = 0 finite
        t = step.double().clamp(min=1.0)
        bc1 = (1.0 - torch.pow(b1, t)).to(step.dtype)
        bc2_sqrt = (1.0 - torch.pow(b2, t)).sqrt().to(step.dtype)
        step_size = lr / bc1  # [B]
        eps = torch.full((), self.eps, dtype=step.dtype, device=step.device)
        new_w, new_opt = {}, {"step": step}
        for n in self.weight_names:
            g, w = _full(grads[n]), weights[n]
            shape = (-1,) + (1,) * (w.dim() - 1)
            # the same operations, in the same order, as torch.optim.Adam's single-tensor step
            m = torch.lerp(opt[f"m_{n}"], g, 1.0 - b1)
            v = torch.addcmul(opt[f"v_{n}"] * b2, g, g, value=1.0 - b2)
            denom = torch.addcdiv(eps, v.sqrt(), bc2_sqrt.view(shape))
            # lifetimes without a label take no step: weights and moments stay as they were
            new_w[n] = _keep_where_invalid(valid, w - step_size.view(shape) * (m / denom), w)
            new_opt[f"m_{n}"] = _keep_where_invalid(valid, m, opt[f"m_{n}"])
            new_opt[f"v_{n}"] = _keep_where_invalid(valid, v, opt[f"v_{n}"])
        return new_w, new_opt

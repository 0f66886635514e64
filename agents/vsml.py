"""VSML: every weight of a network is a tiny LSTM, all sharing one set of meta-parameters.

Kirsch & Schmidhuber, "Meta Learning Backpropagation And Improving It" (NeurIPS 2021). A dense
layer with A inputs and B outputs holds A*B sub-LSTMs with states (h_ab, c_ab) of size N. In a
tick, sub-LSTM (a, b) reads the forward message m_a (size M) arriving at input a and the
backward message d_b (size M) arriving at output b. The layer sends forward
m'_b = mean_a f(h_ab) and backward d'_a = mean_b g(h_ab), with f, g linear. The network's input
x_a is the first component of the first layer's forward message; the error of the previous
prediction (p - y, optionally with the label) enters the last layer's backward message; the
prediction is the first component of the last layer's forward message, bounded by
100*tanh(./100). What a lifetime learns lives only in the sub-LSTM states; the meta-parameters
(a few thousand numbers) are the same for any input and output size.

Per step (the protocol's order: learn from the revealed error, then predict):
  1. optionally, a backward pass: the layers tick from last to first with the error and the
     backward messages they pass down (``backward_pass=True``);
  2. the forward pass: the layers tick from first to last, each with the forward message from
     the layer below (computed after that layer's ticks in this step) and the backward message
     from the layer above (from its current state) or, for the last layer, the error.

Cost is dominated by the recurrent gate product U h over all L*A*B sub-LSTMs (2*N*4N flops
each per tick). The input parts of the gates, W_f m_a and W_b d_b, are computed once per a and
once per b and broadcast; messages average h over a (or b) *before* the linear projection,
which is exact and saves a factor M/N... of work; see ``vsml_kernels`` for the fused paths.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rulegym.agents.base import Agent, Obs, State, bound_logits, check_layer_sizes, check_positive_int, check_positive_number, check_flag
from rulegym.agents.registry import register_agent
from rulegym.agents import vsml_kernels as kernels


def weight_slots(state_size: int) -> tuple[slice, slice]:
    """The state components that hold a cloned rule's weight (the first half) and bias (the
    next quarter, at least one); the weight (bias) is weight_scale times their mean."""
    n_w = max(1, state_size // 2)
    n_b = max(1, state_size // 4)
    return slice(0, n_w), slice(n_w, n_w + n_b)


class SubLSTMParams(nn.Module):
    """The gate meta-parameters shared by every sub-LSTM of a layer (or of the whole network).

    Gate order (i, f, g, o). ``w_fwd`` [4N, M] reads the forward message, ``w_bwd`` [4N, M] the
    backward message, ``u`` [4N, N] the sub-LSTM's own hidden state.
    """

    def __init__(self, state_size: int, msg_size: int, forget_bias: float, input_bias: float):
        super().__init__()
        n, m = state_size, msg_size
        self.w_fwd = nn.Parameter(torch.empty(4 * n, m))
        self.w_bwd = nn.Parameter(torch.empty(4 * n, m))
        self.u = nn.Parameter(torch.empty(4 * n, n))
        self.bias = nn.Parameter(torch.zeros(4 * n))
        bound = 1.0 / math.sqrt(n + 2 * m)
        for w in (self.w_fwd, self.w_bwd, self.u):
            nn.init.uniform_(w, -bound, bound)
        with torch.no_grad():
            self.bias[0:n] = input_bias
            self.bias[n : 2 * n] = forget_bias


class MessageParams(nn.Module):
    """Linear maps from a sub-LSTM's hidden state to the forward and backward messages it sends."""

    def __init__(self, state_size: int, msg_size: int):
        super().__init__()
        self.fwd = nn.Linear(state_size, msg_size)
        self.bwd = nn.Linear(state_size, msg_size)


@register_agent("vsml")
class VSML(Agent):
    """A VSML network of dense layers (``hidden`` sizes between x_dim and n_classes).

    Args:
        x_dim, n_classes: network input and output sizes (any; the meta-parameters do not
            depend on them).
        hidden: sizes of hidden layers, e.g. ``(32,)`` (or ``32``) for 784->32->10. Default: one layer.
        state_size: N, the sub-LSTM state size (16).
        msg_size: M, the size of forward and backward messages (8).
        ticks: sub-LSTM updates per input and pass (2).
        backward_pass: also run a backward pass (last layer to first) right after each error.
        label_feed: put the one-hot label next to the error in the last backward message.
        layer_norm: layer-normalise the messages a layer sends.
        separate_backward: a second set of sub-LSTM parameters for the backward pass ticks.
        per_layer: separate sub-LSTM and message meta-parameters for each layer (else one set
            shared by all); the layer norm's parameters stay shared.
        clip_state: clip the cell state to +-clip_state after every tick (None: no clipping).
        forget_bias, input_bias: initial gate biases (+5 keeps memory, -5 keeps it closed).
        init_cell_fraction: fraction of each cell state drawn at the start of a lifetime from a
            normal truncated to +-2, scaled by 1/sqrt(fan-in); the rest starts at zero.
        freeze_forward: forward-pass ticks only produce messages: the state after a step is the
            state its backward pass left, and forward ticks read no backward messages (zeros);
            without ``backward_pass`` the state never changes (a fixed network).
            With ``backward_pass`` this is the setting of a VSML cloned from backprop
            (``rulegym.learners.cloning``): weights change only when an error arrives.
        init_weight_std: draw each connection's weight w ~ N(0, std^2) into the weight slots
            of its state instead of the truncated-normal cell init (see :func:`weight_slots`:
            the first half of the cell components each hold w / weight_scale, the next
            quarter the bias / weight_scale, zero at the start; h holds the same copy so the
            gates, which read h, see it from the first step; the rest starts at zero). For
            cloned rules: the cell is the LSTM's additive memory, so an update is an increment,
            and a weight spread over several components can change by a sum of several
            gate products (one component's i * g cannot form the product tanh(x) e).
        weight_scale: the constant that maps weights and biases into the LSTM's bounded
            range (4).
        logit_scale: the logits are this times the last layer's forward message (1). A cloned
            rule's layer outputs mean_a tanh(x_a) w_ab + b_b with |w| held below ~weight_scale,
            so a 784-input layer's outputs stay small; a scale lets the same weights give
            confident predictions (``tanh_backprop`` has the same option).
        conv: make the first layer convolutional (``input_shape`` (C, H, W) required;
            ``conv_channels`` 8, ``kernel_size`` 3, ``stride`` 2), followed by the dense layers.
            One sub-LSTM per kernel weight; it reads its input at every position, and since a
            shared weight gets one state, its new state is the mean of the per-position updates
            (as a convolution's weight gradient sums over positions); the forward message at
            (channel, position) averages the per-position outputs over the patch.
    """

    def __init__(
        self,
        x_dim: int,
        n_classes: int,
        *,
        hidden: Sequence[int] = (),
        state_size: int = 16,
        msg_size: int = 8,
        ticks: int = 2,
        backward_pass: bool = False,
        label_feed: bool = True,
        layer_norm: bool = False,
        separate_backward: bool = False,
        per_layer: bool = False,
        clip_state: float | None = None,
        forget_bias: float = 5.0,
        input_bias: float = -5.0,
        init_cell_fraction: float = 0.5,
        freeze_forward: bool = False,
        init_weight_std: float | None = None,
        weight_scale: float = 4.0,
        logit_scale: float = 1.0,
        conv: bool = False,
        input_shape: Sequence[int] | None = None,
        conv_channels: int = 8,
        kernel_size: int = 3,
        stride: int = 2,
    ):
        super().__init__(x_dim, n_classes)
        self.state_size = check_positive_int("state_size", state_size)
        self.msg_size = check_positive_int("msg_size", msg_size)
        if self.msg_size < 2:
            raise ValueError(f"msg_size must be at least 2 (error and label share the backward message), got {msg_size}.")
        self.ticks = check_positive_int("ticks", ticks)
        hidden = check_layer_sizes("hidden", hidden)
        self.conv = check_flag("conv", conv)
        if self.conv:
            if input_shape is None or len(input_shape) != 3 or math.prod(input_shape) != x_dim:
                raise ValueError(
                    f"a convolutional VSML needs input_shape=(C, H, W) with C*H*W = x_dim = {x_dim}, got {input_shape!r}."
                )
            self.input_shape = tuple(int(v) for v in input_shape)
            self.kernel_size = check_positive_int("kernel_size", kernel_size)
            self.stride = check_positive_int("stride", stride)
            self.conv_channels = check_positive_int("conv_channels", conv_channels)
            c_in, height, width = self.input_shape
            out_h = (height - self.kernel_size) // self.stride + 1
            out_w = (width - self.kernel_size) // self.stride + 1
            if out_h < 1 or out_w < 1:
                raise ValueError(f"input_shape {input_shape} is smaller than the kernel ({kernel_size}).")
            self.positions = out_h * out_w
            self.patch = c_in * self.kernel_size**2
            # layer 0 is convolutional: one sub-LSTM per kernel weight (patch element, channel)
            self.sizes = (self.patch, self.conv_channels * self.positions, *hidden, self.n_classes)
        else:
            self.sizes = (self.x_dim, *hidden, self.n_classes)
        self.n_layers = len(self.sizes) - 1
        self.backward_pass = check_flag("backward_pass", backward_pass)
        self.label_feed = check_flag("label_feed", label_feed)
        self.per_layer = check_flag("per_layer", per_layer)
        self.separate_backward = check_flag("separate_backward", separate_backward)
        if self.separate_backward and not self.backward_pass:
            raise ValueError("separate_backward needs backward_pass=True: its parameters serve the backward pass ticks only.")
        if clip_state is not None and not (
            isinstance(clip_state, (int, float)) and not isinstance(clip_state, bool) and clip_state > 0
        ):
            raise ValueError(f"clip_state must be positive or None, got {clip_state!r}.")
        self.clip_state = None if clip_state is None else float(clip_state)
        if not 0.0 <= init_cell_fraction <= 1.0:
            raise ValueError(f"init_cell_fraction must lie in [0, 1], got {init_cell_fraction!r}.")
        self.n_init = int(round(init_cell_fraction * self.state_size))
        self.freeze_forward = check_flag("freeze_forward", freeze_forward)
        if init_weight_std is not None and not (init_weight_std >= 0 and math.isfinite(init_weight_std)):
            raise ValueError(f"init_weight_std must be a finite number >= 0 or None, got {init_weight_std!r}.")
        if not (weight_scale > 0 and math.isfinite(weight_scale)):
            raise ValueError(f"weight_scale must be a positive number, got {weight_scale!r}.")
        if init_weight_std is not None and self.state_size < 2:
            raise ValueError("init_weight_std needs state_size >= 2 (weight and bias slots).")
        self.init_weight_std = None if init_weight_std is None else float(init_weight_std)
        self.weight_scale = float(weight_scale)
        self.logit_scale = check_positive_number("logit_scale", logit_scale)
        make = lambda: SubLSTMParams(self.state_size, self.msg_size, forget_bias, input_bias)  # noqa: E731
        n_sets = self.n_layers if self.per_layer else 1
        self.cells = nn.ModuleList([make() for _ in range(n_sets)])
        self.back_cells = nn.ModuleList([make() for _ in range(n_sets)]) if self.separate_backward else None
        self.messages = nn.ModuleList([MessageParams(self.state_size, self.msg_size) for _ in range(n_sets)])
        self.norm = nn.LayerNorm(self.msg_size) if layer_norm else None
        # the first layer sends no backward message (there is no layer below it): a projection
        # only it would use stays in the meta-parameters, so one rule loads into any depth,
        # but it is frozen, as no gradient can reach it
        if self.n_layers == 1 or self.per_layer:
            self.messages[0].bwd.requires_grad_(False)
        self.state_kinds = {}
        for k in range(self.n_layers):
            self.state_kinds[f"h{k}"] = "weight"
            self.state_kinds[f"c{k}"] = "weight"
            if self.backward_pass:
                self.state_kinds[f"m{k}"] = "activation"  # forward message last seen by layer k

    # ------------------------------------------------------------------ state
    def initial_state(self, batch_size: int, generator: torch.Generator | None = None) -> State:
        batch_size = check_positive_int("batch_size", batch_size)
        p = self.cells[0].u
        n = self.state_size
        state: State = {}
        for k in range(self.n_layers):
            a, b = self.sizes[k], self.sizes[k + 1]
            if self.conv and k == 0:
                b = self.conv_channels
            # [L, N, outputs, inputs] (the conv layer: [L, N, channels, patch elements])
            shape = (self.conv_channels, a) if (self.conv and k == 0) else (b, a)
            c = torch.zeros(batch_size, n, *shape, dtype=p.dtype)
            h = torch.zeros(batch_size, n, *shape, dtype=p.dtype)
            if self.init_weight_std is not None:
                w = torch.randn(batch_size, *shape, generator=generator, dtype=p.dtype) * self.init_weight_std
                w_slots, _ = weight_slots(n)
                c[:, w_slots] = (w / self.weight_scale).clamp(-0.99, 0.99).unsqueeze(1)
                h[:, w_slots] = c[:, w_slots]
            elif self.n_init:
                init = torch.empty(batch_size, self.n_init, *shape, dtype=p.dtype)
                nn.init.trunc_normal_(init, 0.0, 1.0, -2.0, 2.0, generator=generator)
                c[:, : self.n_init] = init / math.sqrt(a)
            state[f"h{k}"] = h.to(p.device)
            state[f"c{k}"] = c.to(p.device)
            if self.backward_pass:
                shape = (batch_size, a, self.positions, self.msg_size) if (self.conv and k == 0) else (batch_size, a, self.msg_size)
                state[f"m{k}"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
        return state

    def decode_weights(self, state: State, k: int) -> tuple[Tensor, Tensor]:
        """The weights [L, outputs, inputs] and biases [L, outputs] a cloned rule's layer k holds:
        weight_scale times the mean of the cell's weight and bias slots (:func:`weight_slots`;
        the bias copies of an output averaged)."""
        w_slots, b_slots = weight_slots(self.state_size)
        c = state[f"c{k}"]
        return self.weight_scale * c[:, w_slots].mean(1), self.weight_scale * c[:, b_slots].mean(1).mean(dim=-1)

    # ------------------------------------------------------------------ pieces
    def _cell(self, k: int, backward: bool = False) -> SubLSTMParams:
        cells = self.back_cells if (backward and self.back_cells is not None) else self.cells
        return cells[k if self.per_layer else 0]

    def _msg(self, k: int) -> MessageParams:
        return self.messages[k if self.per_layer else 0]

    def _send(self, proj: nn.Linear, h_mean: Tensor) -> Tensor:
        """Message [L, X, M] from the averaged hidden state [L, N, X] (exact: proj is linear)."""
        msg = torch.einsum("mn,lnx->lxm", proj.weight, h_mean) + proj.bias
        return self.norm(msg) if self.norm is not None else msg

    def _forward_msg(self, k: int, h_mean: Tensor) -> Tensor:
        """Forward message of layer k from its hidden states averaged over its inputs: [L, N,
        outputs] for a dense layer, [L, N, channels, positions] for the conv layer (sent per
        channel and position)."""
        return self._send(self._msg(k).fwd, h_mean.flatten(2))

    def _backward_msg(self, k: int, h: Tensor) -> Tensor:
        """Backward message of dense layer k (k > 0): the mean over its outputs, per input."""
        return self._send(self._msg(k).bwd, h.mean(dim=2))

    def _patches(self, x: Tensor) -> Tensor:
        """Input messages of the conv layer: each kernel weight's input at each position, [L, patch, P, M]."""
        image = x.reshape(x.shape[0], *self.input_shape)
        cols = F.unfold(image, self.kernel_size, stride=self.stride)  # [L, patch, P]
        return F.pad(cols.unsqueeze(-1), (0, self.msg_size - 1))

    def _error_msg(self, obs: Obs) -> Tensor:
        """The last layer's backward message: [err_b, y_b (label_feed), 0, ...]."""
        parts = [obs["err_prev"]]
        if self.label_feed:
            parts.append(obs["y_prev"])
        msg = torch.stack(parts, dim=-1)
        return F.pad(msg, (0, self.msg_size - msg.shape[-1]))

    def _ticks(self, k: int, h: Tensor, c: Tensor, m_in: Tensor, d_in: Tensor, backward: bool = False):
        """Tick layer k; returns (h, c, h_mean): h_mean the new hidden states averaged over the
        layer's inputs, which its forward message reads."""
        cell = self._cell(k, backward)
        if self.conv and k == 0:
            gate_a = torch.einsum("gm,lkpm->lgkp", cell.w_fwd, m_in)
            d = d_in.reshape(d_in.shape[0], self.conv_channels, self.positions, self.msg_size)
            gate_b = torch.einsum("gm,lopm->lgop", cell.w_bwd, d) + cell.bias[:, None, None]
            h, c, h_pos = kernels.conv_lstm_ticks(h, c, cell.u, gate_a, gate_b, self.clip_state, self.ticks)
            return h, c, h_pos.mean(dim=3)
        # the backward part of the gates once per output b (the input part, once per input a,
        # is formed by the tick); both are broadcast over the connections
        gate_b = torch.baddbmm(cell.bias[:, None], cell.w_bwd.expand(d_in.shape[0], -1, -1), d_in.transpose(1, 2))
        args = (h, c, cell.u, cell.w_fwd, m_in, gate_b, self.clip_state, self.ticks)
        if backward:  # a backward pass sends no forward message
            return (*kernels.lstm_ticks(*args), None)
        return kernels.lstm_ticks(*args, mean_inputs=True)

    # ------------------------------------------------------------------ step
    def _step(self, obs: Obs, state: State):
        hs = [state[f"h{k}"] for k in range(self.n_layers)]
        cs = [state[f"c{k}"] for k in range(self.n_layers)]
        err_msg = self._error_msg(obs)
        new: State = {}
        if self.backward_pass:
            ms = [state[f"m{k}"] for k in range(self.n_layers)]
            d = err_msg
            for k in reversed(range(self.n_layers)):
                hs[k], cs[k], _ = self._ticks(k, hs[k], cs[k], ms[k], d, backward=True)
                if k > 0:
                    d = self._backward_msg(k, hs[k])
        x = obs["x"]
        # x_a is the first component of the input message (per patch element for a conv layer)
        m = self._patches(x) if self.conv else F.pad(x.unsqueeze(-1), (0, self.msg_size - 1))
        for k in range(self.n_layers):
            if self.freeze_forward:
                d = torch.zeros_like(err_msg[:, :1]).expand(-1, self.sizes[k + 1], -1)
            else:
                d = err_msg if k == self.n_layers - 1 else self._backward_msg(k + 1, hs[k + 1])
            if self.backward_pass:
                new[f"m{k}"] = m
            h_k, c_k, h_mean = self._ticks(k, hs[k], cs[k], m, d)
            if not self.freeze_forward:
                hs[k], cs[k] = h_k, c_k
            m = self._forward_msg(k, h_mean)
        for k in range(self.n_layers):
            new[f"h{k}"], new[f"c{k}"] = hs[k], cs[k]
        return bound_logits(self.logit_scale * m[..., 0]), new

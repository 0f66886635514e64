"""Vector-synapse network (VSN): neurons and synapses with vector states and shared update rules.

After Gregor (2020), "Finding online neural update rules by learning to remember"
(arXiv 2003.03124). Every neuron i carries a vector activation h_i and every synapse a vector
state w_ij, both of size ``state_size`` (n). Nothing in the network is a meta-parameter except
one pair of small update networks shared by *all* neurons (OP_h) and *all* synapses (OP_w), a
readout MLP for the prediction layer, and one learned embedding e(tau) per neuron type (one
type per layer). Within a lifetime the network learns by running these rules::

    u_ij^a = w_ij^a * h_j^0                                   synapse effect (component-wise)
    u_i    = sum_j u_ij                                        integration
    h_i   <- OP_h(h_i, [u_i, e(tau_i)])                        neuron update
    w_ij  <- OP_w(w_ij, [h_i, h_j, u_ij, h_i * h_j^1, e(tau_i), e(tau_j)])   synapse update

OP_h and OP_w are chosen separately (``op_h``, ``op_w``) from:

- ``mlp``: s <- f(W2 tanh(W1 [s, x] + b1) + b2), f = sigmoid for neurons, identity for synapses;
- ``mlp_tanh``: the same with f = tanh;
- ``lstm``: an LSTM cell whose input is x and whose recurrent state is split into the visible
  half s (the activation / synapse state) and a cell half c of the same size, kept as its own
  state entry: s = o * tanh(c);
- ``lstm_sigmoid`` (Gregor's LSTM-sigma): s = o * sigmoid(c);
- ``lstm_id``: s = o * c;
- ``gated``: a, b = MLP([s, x]); g = sigmoid(a); r = tanh(b); s <- (1 - g) s + g (r + h_i h_j^1).
  The Hebbian term h_i h_j^1 exists only for synapses; for neurons it is 0.

Layers and connectivity. Layers are neuron types, updated one after another within a step;
every layer receives synapses from every neuron of every layer, itself included (all-to-all
between layers). Two arrangements of the visible neurons (``io``):

- ``"tied"`` -- Gregor's character-stream network; needs ``x_dim == n_classes``. One
  prediction layer of ``n_classes`` neurons is both the input and the output: its first
  component holds the current symbol, its last the error of the last prediction. Meant for
  prediction streams, where x_t *is* the previous label y_{t-1} (the char stream); on other
  tasks ``y_prev`` would be ignored, so it is not the default.
- ``"separate"`` (default; any x_dim and n_classes, e.g. image streams): a sensor layer of
  ``x_dim`` neurons whose activation is clamped to (x_j, x_j, 0, ..., 0) -- x in component 0
  drives the synapse effect and a copy in component 1 feeds the Hebbian term h_i h_j^1 -- plus
  a prediction layer of ``n_classes`` neurons that works like Gregor's input layer with the
  label in place of the next symbol. Sensor neurons receive no synapses (they are clamped).

The prediction layer. Its neurons integrate u_i like any neuron, then
``v_i = MLP([h_i, u_i, e(tau)])`` (n outputs); the logits are v_i^0 (bounded by
:func:`~rulegym.agents.base.bound_logits`), and a softmax over the layer's neurons, per
component, gives p = softmax(v^0) and the middle components. When the label arrives, the layer
becomes ``h_i <- (y_i, softmax(v)_i^1, ..., softmax(v)_i^{n-2}, y_i - p_i)`` (the middle
components are read from the softmaxed v: with the old h they would never change).

Mapping Gregor's step onto rulegym's protocol. Gregor's step s is: predict p_s, write back
(y_s, ..., y_s - p_s), update the hidden layers and the synapses. rulegym's step t must first
learn from (y_{t-1}, err_prev) and end with the prediction for x_t, so one protocol step is the
second half of Gregor's step t-1 followed by the first half of step t:

1. write-back: the prediction layer becomes (first, middle, -err_prev), with first = x_t (tied,
   = y_{t-1} on the char stream) or y_prev (separate); -err_prev = y - p is Gregor's error
   (the env's err_prev is p - y, computed from the bounded logits, i.e. p = softmax(v^0));
2. the prediction layer's incoming synapses update, with the post-synaptic state just written
   and the pre-synaptic activity that produced the prediction (state of the previous step);
3. separate only: the sensor layer shows x_t;
4. hidden layers in order: integrate, OP_h, then their incoming synapses update (post = the new
   h_i, pre = the activities that produced u_ij);
5. prediction for x_t: integrate into the prediction layer, readout MLP, logits, softmax.

At t = 0 y_prev and err_prev are zeros, so step 1 writes zeros (no error signal).

State. ``h`` [B, N, n] holds every neuron's activation (layer blocks in order), ``c_h`` the LSTM
cells of the hidden neurons (OP_h in the LSTM family): both "activation". ``w_<layer>``
[B, N_layer, N, n] holds the synapses into a layer and ``cw_<layer>`` their LSTM cells (OP_w in
the LSTM family): "weight". Synapses start like the weights of a standard network, each
component N(0, 1/fan_in) with fan_in = N (all presynaptic neurons), drawn per lifetime from the
generator; activations and cells start at zero.

Vectorisation. Everything is batched over lifetimes, neurons and synapses; the only Python loop
is over the few layers. The first layer of OP_w is applied as a sum of per-post-neuron,
per-pre-neuron and per-synapse parts (the same linear map on the concatenated input, split by
columns), so per synapse it costs 2n x width instead of (5n + 2E) x width.

Defaults: ``state_size=6`` (Gregor's 14 is better but ~3x the cost of 6 per synapse on CPU),
one hidden layer of 32 neurons, OP_h = OP_w = ``gated``, update-net width 32, embeddings of 4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rulegym.agents.base import Agent, Obs, State, bound_logits, check_positive_int
from rulegym.agents.registry import register_agent

__all__ = ["OPS", "IO_MODES", "UpdateOp", "VectorSynapseNet", "canonical_op"]

#: the update-network kinds, for OP_h and OP_w alike
OPS = ("mlp", "mlp_tanh", "lstm", "lstm_sigmoid", "lstm_id", "gated")
LSTM_OPS = ("lstm", "lstm_sigmoid", "lstm_id")
IO_MODES = ("separate", "tied")
_ALIASES = {
    "mlp-tanh": "mlp_tanh",
    "mlptanh": "mlp_tanh",
    "lstm-σ": "lstm_sigmoid",
    "lstm_σ": "lstm_sigmoid",
    "lstm-sigma": "lstm_sigmoid",
    "lstm_sigma": "lstm_sigmoid",
    "lstm-sigmoid": "lstm_sigmoid",
    "lstm-id": "lstm_id",
}
#: initial bias of the GATED gate pre-activation: sigmoid(-2) = 0.12, the state is mostly kept
GATE_BIAS_INIT = -2.0


def canonical_op(name: object, which: str = "op") -> str:
    """The canonical OP name for ``name`` (case-insensitive; Gregor's spellings such as
    ``"MLP-tanh"``, ``"LSTM-σ"``, ``"LSTM-id"``, ``"GATED"`` are accepted)."""
    if not isinstance(name, str):
        raise TypeError(f"{which} must be a string naming an update network ({', '.join(OPS)}), got {name!r}.")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in OPS:
        raise ValueError(f"unknown {which} {name!r}; valid update networks: {', '.join(OPS)} (or Gregor's spellings MLP-tanh, LSTM-σ, LSTM-id).")
    return key


class UpdateOp(nn.Module):
    """One shared update network ``s <- OP(s, x)`` (see the module docstring for the kinds).

    ``role`` is ``"h"`` (neurons: MLP output sigmoid) or ``"w"`` (synapses: MLP output linear).
    The first layer is one ``nn.Linear`` on ``[s, x]`` (width = ``hidden`` for the MLP kinds and
    GATED, 4 n gates for the LSTM kinds); callers that can compute its pre-activation more
    cheaply (the synapses) do so from :attr:`first` by columns and call :meth:`finish`.
    """

    def __init__(self, kind: str, role: str, size: int, in_dim: int, hidden: int):
        super().__init__()
        if role not in ("h", "w"):
            raise ValueError(f"role must be 'h' or 'w', got {role!r}.")
        self.kind = canonical_op(kind)
        self.role = role
        self.size = check_positive_int("size", size)
        self.in_dim = int(in_dim)
        if self.kind in LSTM_OPS:
            self.first = nn.Linear(self.size + self.in_dim, 4 * self.size)
            with torch.no_grad():  # forget gate open at the start, as is usual for LSTMs
                self.first.bias[self.size : 2 * self.size].fill_(1.0)
            self.out = None
        else:
            self.first = nn.Linear(self.size + self.in_dim, check_positive_int("op_hidden", hidden))
            n_out = 2 * self.size if self.kind == "gated" else self.size
            self.out = nn.Linear(hidden, n_out)
            if self.kind == "gated":
                with torch.no_grad():
                    self.out.bias[: self.size].fill_(GATE_BIAS_INIT)

    @property
    def has_cell(self) -> bool:
        return self.kind in LSTM_OPS

    @property
    def width(self) -> int:
        return self.first.out_features

    def finish(self, z: Tensor, s: Tensor, c: Tensor | None = None, hebb: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """New (state, cell) from the first layer's pre-activation ``z`` = W1 [s, x] + b1.

        ``hebb`` is the GATED rule's Hebbian term (h_i h_j^1 for synapses; None = 0).
        """
        if self.kind in LSTM_OPS:
            i, f, g, o = z.chunk(4, dim=-1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            squash = {"lstm": torch.tanh, "lstm_sigmoid": torch.sigmoid, "lstm_id": lambda v: v}[self.kind]
            return torch.sigmoid(o) * squash(c_new), c_new
        out = self.out(torch.tanh(z))
        if self.kind == "gated":
            a, b = out.chunk(2, dim=-1)
            g = torch.sigmoid(a)
            target = torch.tanh(b) if hebb is None else torch.tanh(b) + hebb
            return (1.0 - g) * s + g * target, None
        if self.kind == "mlp_tanh":
            return torch.tanh(out), None
        return (torch.sigmoid(out) if self.role == "h" else out), None

    def forward(self, s: Tensor, x: Tensor, c: Tensor | None = None, hebb: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The plain definition: ``finish(W1 [s, x] + b1, ...)``."""
        return self.finish(self.first(torch.cat([s, x], dim=-1)), s, c, hebb)


@register_agent("vsn")
class VectorSynapseNet(Agent):
    """Gregor's (2020) vector-synapse network: vector neurons and synapses with shared learned update rules.

    The rulegym agent "vsn" (see the module docstring).

    Options:
        state_size: components of every neuron activation and synapse state (>= 2; default 6,
            Gregor used 2-14 and found 14 best).
        hidden_layers: number of hidden layers (>= 0; default 1).
        neurons: neurons per hidden layer (default 32).
        op_h, op_w: update networks for neurons and synapses, from ``OPS`` (default ``gated``).
        op_hidden: width of the update networks' tanh hidden layer and of the readout MLP (32).
        embed_dim: size of the learned neuron-type embeddings e(tau) (4).
        io: ``"separate"`` (sensor layer + prediction layer; any task) or ``"tied"`` (Gregor's
            char-stream layout, one layer is input and prediction; needs x_dim == n_classes).
    """

    def __init__(
        self,
        x_dim: int,
        n_classes: int,
        state_size: int = 6,
        hidden_layers: int = 1,
        neurons: int = 32,
        op_h: str = "gated",
        op_w: str = "gated",
        op_hidden: int = 32,
        embed_dim: int = 4,
        io: str = "separate",
    ):
        super().__init__(x_dim, n_classes)
        n = check_positive_int("state_size", state_size)
        if n < 2:
            raise ValueError(
                f"state_size must be >= 2 (component 0 carries the signal, the last the error and component 1 the "
                f"Hebbian term), got {state_size}."
            )
        if isinstance(hidden_layers, bool) or not isinstance(hidden_layers, int) or hidden_layers < 0:
            raise ValueError(f"hidden_layers must be a non-negative integer, got {hidden_layers!r}.")
        self.neurons = check_positive_int("neurons", neurons)
        self.op_hidden = check_positive_int("op_hidden", op_hidden)
        self.embed_dim = check_positive_int("embed_dim", embed_dim)
        if io not in IO_MODES:
            raise ValueError(f"io must be one of {', '.join(IO_MODES)}, got {io!r}.")
        if io == "tied" and self.x_dim != self.n_classes:
            raise ValueError(
                f"io='tied' makes one layer both input and prediction, so it needs x_dim == n_classes "
                f"(got x_dim={self.x_dim}, n_classes={self.n_classes}); use io='separate' for this task."
            )
        self.state_size = n
        self.hidden_layers = int(hidden_layers)
        self.io = io

        # layers in update order: (name, size, role); roles: sensor, hidden, predict
        layers: list[tuple[str, int, str]] = []
        if io == "separate":
            layers.append(("in", self.x_dim, "sensor"))
        else:
            layers.append(("io", self.n_classes, "predict"))
        layers += [(f"hid{k + 1}", self.neurons, "hidden") for k in range(self.hidden_layers)]
        if io == "separate":
            layers.append(("out", self.n_classes, "predict"))
        self.layers = layers
        starts = [0]
        for _, size, _ in layers:
            starts.append(starts[-1] + size)
        self.slices = {name: (starts[k], starts[k + 1]) for k, (name, _, _) in enumerate(layers)}
        self.n_total = starts[-1]
        self.predict_layer = next(name for name, _, role in layers if role == "predict")
        self.hidden_names = [name for name, _, role in layers if role == "hidden"]
        self.receiving = [name for name, _, role in layers if role != "sensor"]
        self.layer_index = {name: k for k, (name, _, _) in enumerate(layers)}
        h_first = self.slices[self.hidden_names[0]][0] if self.hidden_names else 0
        self.hidden_span = (h_first, h_first + self.neurons * self.hidden_layers)
        # the type (layer) of every neuron, to look up e(tau_j) for all presynaptic neurons at once
        types = torch.cat([torch.full((size,), k, dtype=torch.long) for k, (_, size, _) in enumerate(layers)])
        self.register_buffer("neuron_type", types, persistent=False)

        E = self.embed_dim
        self.embed = nn.Parameter(torch.randn(len(layers), E))
        self.op_h = UpdateOp(canonical_op(op_h, "op_h"), "h", n, n + E, self.op_hidden)
        # OP_w input: [h_i, h_j, u_ij, h_i * h_j^1, e_i, e_j]
        self.op_w = UpdateOp(canonical_op(op_w, "op_w"), "w", n, 4 * n + 2 * E, self.op_hidden)
        self.readout = nn.Sequential(nn.Linear(2 * n + E, self.op_hidden), nn.Tanh(), nn.Linear(self.op_hidden, n))

        kinds: dict[str, str] = {"h": "activation"}
        if self.op_h.has_cell and self.hidden_layers:
            kinds["c_h"] = "activation"
        for name in self.receiving:
            kinds[f"w_{name}"] = "weight"
            if self.op_w.has_cell:
                kinds[f"cw_{name}"] = "weight"
        self.state_kinds = kinds

    # ------------------------------------------------------------------ state

    def initial_state(self, batch_size: int, generator: torch.Generator | None = None) -> State:
        """Zero activations and cells; synapses N(0, 1/fan_in) per component, fan_in = all neurons."""
        batch_size = check_positive_int("batch_size", batch_size)
        p = self.embed
        n, N = self.state_size, self.n_total
        state: State = {"h": torch.zeros(batch_size, N, n, device=p.device, dtype=p.dtype)}
        if "c_h" in self.state_kinds:
            state["c_h"] = torch.zeros(batch_size, self.neurons * self.hidden_layers, n, device=p.device, dtype=p.dtype)
        gen_device = generator.device if generator is not None else p.device
        for name in self.receiving:
            lo, hi = self.slices[name]
            w = torch.randn(batch_size, hi - lo, N, n, generator=generator, device=gen_device, dtype=p.dtype)
            state[f"w_{name}"] = (w * N**-0.5).to(p.device)
            if self.op_w.has_cell:
                state[f"cw_{name}"] = torch.zeros_like(state[f"w_{name}"])
        return state

    def num_synapses(self) -> int:
        """Synapses per lifetime (every receiving neuron from every neuron)."""
        return sum((hi - lo) * self.n_total for lo, hi in (self.slices[r] for r in self.receiving))

    # ------------------------------------------------------------------ rules

    def _synapse_update(self, name: str, w: Tensor, cw: Tensor | None, post: Tensor, pre: Tensor) -> tuple[Tensor, Tensor | None]:
        """OP_w on every synapse into layer ``name``: w [B, Ni, N, n], post [B, Ni, n], pre [B, N, n].

        Equal to ``op_w(w, [h_i, h_j, u_ij, h_i h_j^1, e_i, e_j])`` applied synapse by synapse,
        computed as a sum of per-synapse, per-post and per-pre parts of the first layer.
        """
        n, E = self.state_size, self.embed_dim
        W, b = self.op_w.first.weight, self.op_w.first.bias
        # column blocks of W1 on [w, h_i, h_j, u, hh, e_i, e_j]
        c = [0, n, 2 * n, 3 * n, 4 * n, 5 * n, 5 * n + E, 5 * n + 2 * E]
        W_w, W_hi, W_hj, W_u, W_hh, W_ei, W_ej = (W[:, c[k] : c[k + 1]] for k in range(7))
        u = w * pre[:, None, :, :1]  # u_ij^a = w_ij^a h_j^0                      [B, Ni, N, n]
        e_i = self.embed[self.layer_index[name]]
        e_j = self.embed[self.neuron_type]  # [N, E]
        per_post = F.linear(post, W_hi) + F.linear(e_i, W_ei, b)  # [B, Ni, width]
        per_pre = F.linear(pre, W_hj) + F.linear(e_j, W_ej)  # [B, N, width]
        h1_pre = pre[:, None, :, 1:2]  # h_j^1                                     [B, 1, N, 1]
        neuron_terms = per_post[:, :, None, :] + per_pre[:, None, :, :]  # [B, Ni, N, width]
        per_syn = F.linear(torch.cat([w, u], dim=-1), torch.cat([W_w, W_u], dim=1)) + neuron_terms
        z = torch.addcmul(per_syn, F.linear(post, W_hh)[:, :, None, :], h1_pre)  # + W_hh (h_i h_j^1)
        hebb = post[:, :, None, :] * h1_pre if self.op_w.kind == "gated" else None
        return self.op_w.finish(z, w, cw, hebb)

    def _neuron_update(self, name: str, h: Tensor, u: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        e = self.embed[self.layer_index[name]].expand(*h.shape[:-1], self.embed_dim)
        return self.op_h(h, torch.cat([u, e], dim=-1), c)

    def _predict(self, h_pred: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Readout of the prediction layer: logits v^0 and the new state (h^0, softmax(v)^{1..n-2}, h^{n-1})."""
        e = self.embed[self.layer_index[self.predict_layer]].expand(*h_pred.shape[:-1], self.embed_dim)
        v = self.readout(torch.cat([h_pred, u, e], dim=-1))  # [B, C, n]
        sm = torch.softmax(v, dim=1)  # over the layer's neurons, per component
        new_h = torch.cat([h_pred[..., :1], sm[..., 1 : self.state_size - 1], h_pred[..., -1:]], dim=-1)
        return bound_logits(v[..., 0]), new_h

    def _step(self, obs: Obs, state: State) -> tuple[Tensor, State]:
        x, y_prev, err_prev = obs["x"], obs["y_prev"], obs["err_prev"]
        h_old = state["h"]
        hs = {name: h_old[:, lo:hi] for name, (lo, hi) in self.slices.items()}
        new: State = {}
        cw = {r: state.get(f"cw_{r}") for r in self.receiving}

        # 1. the label and the error of the last prediction arrive in the prediction layer
        P = self.predict_layer
        first = x if self.io == "tied" else y_prev
        hp = hs[P]
        hs[P] = torch.cat([first[..., None], hp[..., 1 : self.state_size - 1], -err_prev[..., None]], dim=-1)
        # 2. its incoming synapses learn: post = label/error, pre = the activity that predicted
        w_p, cw_p = self._synapse_update(P, state[f"w_{P}"], cw[P], hs[P], h_old)
        new[f"w_{P}"] = w_p
        if cw_p is not None:
            new[f"cw_{P}"] = cw_p
        # 3. the sensors show x_t
        if self.io == "separate":
            zeros = x.new_zeros(*x.shape, self.state_size - 2)
            hs["in"] = torch.cat([x[..., None], x[..., None], zeros], dim=-1)
        # 4. hidden layers in sequence: integrate, OP_h, then their synapses
        c_h = state.get("c_h")
        c_parts = []
        for k, name in enumerate(self.hidden_names):
            pre = torch.cat([hs[nm] for nm, _, _ in self.layers], dim=1)
            w = state[f"w_{name}"]
            u = torch.einsum("bijn,bj->bin", w, pre[..., 0])  # u_i = sum_j w_ij h_j^0
            c_k = c_h[:, k * self.neurons : (k + 1) * self.neurons] if c_h is not None else None
            h_k, c_k = self._neuron_update(name, hs[name], u, c_k)
            hs[name] = h_k
            if c_k is not None:
                c_parts.append(c_k)
            w_new, cw_new = self._synapse_update(name, w, cw[name], h_k, pre)
            new[f"w_{name}"] = w_new
            if cw_new is not None:
                new[f"cw_{name}"] = cw_new
        # 5. predict for x_t
        pre = torch.cat([hs[nm] for nm, _, _ in self.layers], dim=1)
        u_p = torch.einsum("bijn,bj->bin", w_p, pre[..., 0])
        logits, hs[P] = self._predict(hs[P], u_p)
        new["h"] = torch.cat([hs[nm] for nm, _, _ in self.layers], dim=1)
        if "c_h" in self.state_kinds:
            new["c_h"] = torch.cat(c_parts, dim=1)
        return logits, {k: new[k] for k in self.state_kinds}

    def extra_repr(self) -> str:
        return (
            f"x_dim={self.x_dim}, n_classes={self.n_classes}, io={self.io!r}, state_size={self.state_size}, "
            f"layers={[(n, s) for n, s, _ in self.layers]}, op_h={self.op_h.kind!r}, op_w={self.op_w.kind!r}, "
            f"synapses={self.num_synapses()}"
        )

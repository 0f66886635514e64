"""Learning-algorithm cloning: train VSML's sub-LSTMs to implement backpropagation.

Kirsch & Schmidhuber (appendix B.1) show the shared sub-LSTM can be trained to run backprop,
after which the VSML learns real datasets. Here a VSML with a backward pass, a separate
backward LSTM, one tick per pass and a frozen forward pass (``freeze_forward``) is trained by
regression, one tick at a time, on random data, to reproduce the network and update of
:mod:`rulegym.agents.backprop_net` at every connection (a, b) with weight w and bias b held in
its cell state (``weight_scale`` (4) times the mean of the weight slots -- the first half of
the components -- and of the bias slots, the next quarter; :func:`rulegym.agents.vsml.weight_slots`).
The cell is the LSTM's additive memory, so keeping a weight is a forget gate near 1 and an
update an increment; spread over several components, the increment is a sum of gate products
i * g, enough to form tanh(x) e, which a single component's product cannot):

  forward tick  (message x_a in, no backward message):  forward message[0]  = tanh(x_a) w + b
  backward tick (x_a and the error e_b in):  backward message[0] = e_b w (1 - tanh(x_a)^2)
                                             new weight = w - eta tanh(x_a) e_b
                                             new bias   = b - eta e_b

The messages a layer sends are means over its connections, as VSML sends them, so the targets
of a layer are those means. The curriculum (``stages``):

* ``shallow``    -- independent connections, each with its own random x, e (and ``minibatch``
  data points from one state whose new states are averaged, as a mini-batch averages updates);
* ``chain``      -- independent connections run ``chain_length`` updates in a row on fresh x, e
  each step, scored at every step against exact backprop's weights after as many updates
  (backpropagated through the whole chain), so errors that only show after many updates --
  a small systematic drift per update -- are trained away;
* ``deep_truth`` -- two-layer networks whose second layer reads the ground-truth hidden
  activations and whose first layer reads the ground-truth backpropagated error;
* ``deep_own``   -- the same networks running on the VSML's own forward and backward messages,
  scored against the ground-truth network built from the weights the states hold.

Training states come from a buffer of the VSML's own past states (each backward tick's new
states go back in) mixed with fresh initial states, so the rule is trained on the states it
will visit. Update errors are measured in units of eta (the size of an update).

    python -m rulegym.learners.cloning --out runs/cloned --iterations 20000,2000,5000,5000 [--ship NAME]

``--init NAME`` starts from a shipped cloned rule (or a run folder's ``meta_params.pt``) instead
of a fresh VSML, e.g. to run only further stages (``--iterations 0,3000,0,0``).

``--ship NAME`` also writes the result as a pretrained rule (``agents/rules/NAME.pt`` and its
manifest), loadable by name like every shipped rule.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from rulegym.agents import make_agent
from rulegym.agents.backprop_net import layer_backward, layer_forward
from rulegym.agents.vsml import VSML, weight_slots
from rulegym.agents.vsml_kernels import lstm_ticks

STAGES = ("shallow", "chain", "deep_truth", "deep_own")
INPUT_DISTRIBUTIONS = ("normal", "mixed")

#: the agent options of a cloned rule (the learner builds the VSML with these)
CLONED_OPTIONS = {
    "ticks": 1,
    "backward_pass": True,
    "separate_backward": True,
    "freeze_forward": True,
    "label_feed": False,
    "init_weight_std": 1.0,
    "weight_scale": 4.0,
}


@dataclass
class CloningConfig:
    """What the cloning learner does (all validated by :meth:`check`)."""

    iterations: tuple[int, ...] = (3000, 0, 1500, 1500)  #: per stage, in ``STAGES`` order
    eta: float = 0.3  #: the learning rate the cloned rule implements
    lr: float = 3e-3  #: Adam's learning rate for the meta-parameters
    lr_final: float = 0.05  #: the learning rate decays (cosine, over all stages) to lr * lr_final
    grad_clip: float = 1.0
    connections: int = 512  #: sampled connections per shallow step
    networks: int = 32  #: sampled networks per deep step
    deep_sizes: tuple[int, int, int] = (6, 5, 4)  #: inputs, hidden, outputs of the deep networks
    minibatch: int = 1  #: data points per state in the shallow stage, new states averaged
    chain_length: int = 16  #: updates per sampled state in the chain stage
    chain_connections: int = 256  #: sampled connections per chain step
    x_std: float = 1.0  #: inputs ~ N(0, x_std^2) ...
    #: ... or, with inputs="mixed", a third N(0, x_std^2), a third exactly 0 and a third U(0, 1), as
    #: image pixels are (mostly 0, else in [0, 1]): a rule that drifts or biases its message when
    #: x = 0 is wrong on most of an image's connections at once
    inputs: str = "normal"
    error_scale: float = 1.0  #: half the errors ~ U(-1, 1) * error_scale * 10^U(-1.3, 0), half p - onehot
    init_weight_std: float = 1.0  #: the cloned rule's initial weights ~ N(0, std^2) (agent option)
    #: a weight is weight_scale x the mean of its cell slots (agent option; 4 in the paper). The
    #: forward message reads the weight through h = o tanh(c), so weights beyond ~weight_scale
    #: saturate it (16 was tried once: its forward message came out ten times less accurate)
    weight_scale: float = 4.0
    train_weight_std: float = 2.0  #: fresh training states' weights ~ N(0, std^2), biases N(0, (std/2)^2):
    #: wider than the initial weights, as a lifetime's updates carry weights away from them
    buffer_size: int = 65536
    fresh_fraction: float = 0.05  #: share of sampled states that are fresh: the rest continue
    #: the buffer's update chains, so states that went through many updates are trained on
    update_weight: float = 1.0  #: loss weight of the update errors (in units of eta)
    #: loss weight of the spread of a state's weight slots (and bias slots) around their mean, in
    #: units of eta (0: unconstrained). On a real stream the shipped clone's slots part by tens
    #: in opposite directions while their mean, the weight, stays small
    slot_weight: float = 0.0
    #: clip exact backprop's new weights and biases to +-0.99 weight_scale, the range a state
    #: holds (``tanh_backprop``'s ``bound_updates``): the rule learns to stop at the edge of that
    #: range rather than to follow updates past it, where its forward message saturates
    bound_updates: bool = False
    #: also fill the buffer with the states the rule reaches when it learns online on this env
    #: (a registered env id, e.g. "rulegym/Digits-v0"; None: random-data states only). Every
    #: ``deploy_every`` iterations the current rule runs ``deploy_lifetimes`` fresh one-layer
    #: lifetimes of ``deploy_steps`` steps and ``deploy_states`` of their connection states, drawn
    #: over the steps, go into the buffer: a rule trained on random data only reaches states on a
    #: real stream where its forward message is far from the forward pass of the weights it holds
    deploy_env: str | None = None
    deploy_every: int = 50
    deploy_lifetimes: int = 4
    deploy_steps: int = 300
    deploy_states: int = 16384
    #: hidden layer sizes of the deployed networks (() : one layer). With hidden layers the
    #: deployed states are drawn evenly over the layers, so a deep network's hidden layer, whose
    #: errors arrive through the rule's own backward messages, is trained on as often as its output
    deploy_hidden: tuple = ()
    state_size: int = 16
    msg_size: int = 8
    seed: int = 0
    log_every: int = 100
    agent_options: dict = field(default_factory=dict)  #: extra VSML options (e.g. forget_bias)

    def check(self) -> "CloningConfig":
        if len(self.iterations) != len(STAGES) or any(int(i) < 0 for i in self.iterations):
            raise ValueError(f"iterations must be {len(STAGES)} counts >= 0 for the stages {STAGES}, got {self.iterations!r}.")
        for name in ("eta", "lr", "lr_final", "grad_clip", "x_std", "error_scale", "init_weight_std", "train_weight_std", "update_weight", "weight_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}.")
        for name in ("connections", "networks", "minibatch", "chain_length", "chain_connections", "buffer_size", "state_size", "msg_size", "log_every",
                     "deploy_every", "deploy_lifetimes", "deploy_steps", "deploy_states"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}.")
        if len(self.deep_sizes) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.deep_sizes):
            raise ValueError(f"deep_sizes must be (inputs, hidden, outputs) >= 1, got {self.deep_sizes!r}.")
        fixed = sorted({"state_size", "msg_size", "weight_scale", "init_weight_std", *CLONED_OPTIONS} & set(self.agent_options))
        if fixed:
            raise ValueError(f"agent_options may not set {fixed}: they are config fields or fixed for cloning (see CLONED_OPTIONS).")
        sizes = sorted({"x_dim", "n_classes", "hidden"} & set(self.agent_options))
        if sizes:
            raise ValueError(f"agent_options may not set {sizes}: a cloned rule runs at any sizes (deep_sizes and deploy_hidden "
                             "set those of training).")
        if self.inputs not in INPUT_DISTRIBUTIONS:
            raise ValueError(f"inputs must be one of {INPUT_DISTRIBUTIONS}, got {self.inputs!r}.")
        if not (isinstance(self.slot_weight, (int, float)) and math.isfinite(self.slot_weight) and self.slot_weight >= 0):
            raise ValueError(f"slot_weight must be a number >= 0, got {self.slot_weight!r}.")
        if not 0.0 <= self.fresh_fraction <= 1.0:
            raise ValueError(f"fresh_fraction must lie in [0, 1], got {self.fresh_fraction!r}.")
        if self.state_size < 2:
            raise ValueError("state_size must be >= 2 (a weight and a bias slot).")
        if not all(isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in self.deploy_hidden):
            raise ValueError(f"deploy_hidden must be hidden layer sizes >= 1 (e.g. (32,)), got {self.deploy_hidden!r}.")
        if self.deploy_env is None and self.deploy_hidden:
            raise ValueError("deploy_hidden sets the deployed networks' hidden layers: it needs a deploy_env.")
        if self.deploy_env is not None:
            from rulegym.envs import ENVS
            from rulegym.envs.registration import task_options

            if self.deploy_env not in ENVS:
                raise ValueError(f"deploy_env must be a registered env id ({', '.join(sorted(ENVS))}) or None, got {self.deploy_env!r}.")
            if "lifetime_length" not in task_options(self.deploy_env):
                raise ValueError(f"deploy_env {self.deploy_env!r} sets its own lifetime length (an episodic task); "
                                 "deployment runs lifetimes of deploy_steps steps: pick a stream env such as rulegym/Digits-v0.")
        return self


def cloned_options(config: CloningConfig) -> dict:
    """The VSML options of the rule ``config`` clones (as shipped in its manifest)."""
    return {**CLONED_OPTIONS, "init_weight_std": config.init_weight_std, "weight_scale": config.weight_scale,
            "state_size": config.state_size, "msg_size": config.msg_size, **config.agent_options}


def make_cloned_vsml(config: CloningConfig, x_dim: int = 2, n_classes: int = 2, hidden=(2,)) -> VSML:
    """A VSML set up to be cloned (two layers, so every meta-parameter is trainable)."""
    return make_agent("vsml", x_dim, n_classes, hidden=tuple(hidden), **cloned_options(config))


def agent_options_differ(agent: VSML, options: dict) -> dict:
    """The options in ``options`` that ``agent`` was built with other values of: option ->
    (agent's, given). Options that only set initial meta-parameter values (forget_bias,
    input_bias, init_cell_fraction) leave no trace in the agent and are not compared."""
    built = {"layer_norm": agent.norm is not None, "separate_backward": agent.back_cells is not None}
    differ = {}
    for key, value in options.items():
        have = built[key] if key in built else getattr(agent, key, value)
        if have != value:
            differ[key] = (have, value)
    return differ


def check_cloned(agent: VSML, config: CloningConfig | None = None) -> None:
    """The VSML settings cloning needs, and (with ``config``) the options it trains and ships
    with (:func:`cloned_options`); a clear error otherwise."""
    need = {"ticks": 1, "backward_pass": True, "freeze_forward": True, "per_layer": False, "conv": False}
    wrong = {k: getattr(agent, k) for k, v in need.items() if getattr(agent, k) != v}
    if wrong or agent.back_cells is None:
        raise ValueError(
            f"cloning needs a VSML with ticks=1, backward_pass, separate_backward, freeze_forward, shared "
            f"meta-parameters and dense layers; this one has {wrong or {'separate_backward': False}}."
        )
    differ = {}
    if config is not None:
        # the options the config leaves at VSML's defaults count too (a clip_state the config does not set)
        defaults = {k: p.default for k, p in inspect.signature(VSML.__init__).parameters.items() if k in ("clip_state", "layer_norm", "logit_scale")}
        differ = agent_options_differ(agent, {**defaults, **cloned_options(config)})
    if differ:
        details = ", ".join(f"{k}: {a!r} in the agent, {b!r} in the config" for k, (a, b) in differ.items())
        raise ValueError(f"the agent's VSML options are not the config's ({details}); the rule would be shipped with the config's.")


# ---------------------------------------------------------------------------- one tick
def tick(agent: VSML, backward: bool, h: Tensor, c: Tensor, m: Tensor, d: Tensor):
    """One tick of a layer's connections h, c [S, N, B, A] with forward messages m [S, A, M]
    and backward messages d [S, B, M]; returns (h', c', forward message [S, B, M] (mean over
    a), backward message [S, A, M] (mean over b))."""
    cell = agent._cell(0, backward)
    gate_b = torch.matmul(cell.w_bwd, d.transpose(1, 2)) + cell.bias[:, None]
    h2, c2 = lstm_ticks(h, c, cell.u, cell.w_fwd, m, gate_b, agent.clip_state, 1)
    msg = agent._msg(0)
    return h2, c2, agent._send(msg.fwd, h2.mean(dim=3)), agent._send(msg.bwd, h2.mean(dim=2))


def _pad(values: Tensor, size: int) -> Tensor:
    """Messages [..., size] with ``values`` in component 0."""
    return F.pad(values.unsqueeze(-1), (0, size - 1))


# ---------------------------------------------------------------------------- states
def fresh_states(config: CloningConfig, count: int, generator: torch.Generator) -> Tensor:
    """Initial states (h, c) [count, 2, N]: weight ~ N(0, std^2) and bias ~ N(0, (std/2)^2),
    scaled, in the weight and bias slots of both c and h (as VSML's ``init_weight_std`` lays
    them out, there with bias 0)."""
    n, std, scale = config.state_size, config.train_weight_std, config.weight_scale
    w_slots, b_slots = weight_slots(n)
    out = torch.zeros(count, 2, n)
    out[:, :, w_slots] = (torch.randn(count, 1, 1, generator=generator) * std / scale).clamp(-0.99, 0.99)
    out[:, :, b_slots] = (torch.randn(count, 1, 1, generator=generator) * std / 2 / scale).clamp(-0.99, 0.99)
    return out


class StateBuffer:
    """A ring of past connection states (h, c) [capacity, 2, N], mixed with fresh ones."""

    def __init__(self, config: CloningConfig, generator: torch.Generator):
        self.config, self.g = config, generator
        self.data = self.fresh(config.buffer_size)
        self.pos = 0

    def fresh(self, count: int) -> Tensor:
        """``count`` fresh states (:func:`fresh_states`)."""
        return fresh_states(self.config, count, self.g)

    def sample(self, count: int) -> tuple[Tensor, Tensor]:
        """(h, c) [count, N]: a ``fresh_fraction`` of fresh states, the rest from the buffer."""
        n_fresh = int(round(count * self.config.fresh_fraction))
        idx = torch.randint(self.data.shape[0], (count - n_fresh,), generator=self.g)
        states = torch.cat([self.fresh(n_fresh), self.data[idx]])
        states = states[torch.randperm(count, generator=self.g)]
        return states[:, 0], states[:, 1]

    def push(self, h: Tensor, c: Tensor) -> None:
        """Add new states h, c [count, N] (finite ones only), overwriting the oldest."""
        states = torch.stack([h.detach(), c.detach()], dim=1)
        states = states[torch.isfinite(states).flatten(1).all(dim=1)]
        cap = self.data.shape[0]
        states = states[-cap:]
        end = self.pos + states.shape[0]
        if end <= cap:
            self.data[self.pos : end] = states
        else:
            first = cap - self.pos
            self.data[self.pos :] = states[:first]
            self.data[: end - cap] = states[first:]
        self.pos = end % cap


def _layer_state(h: Tensor, c: Tensor, shape: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """Connection states [S*B*A, N] -> layer states [S, N, B, A]."""
    s, b, a = shape
    return (t.reshape(s, b, a, -1).permute(0, 3, 1, 2).contiguous() for t in (h, c))


def _flat_state(h: Tensor) -> Tensor:
    """Layer states [S, N, B, A] -> connection states [S*B*A, N]."""
    return h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])


# ---------------------------------------------------------------------------- targets
def backprop_targets(x: Tensor, e: Tensor, w: Tensor, b: Tensor, eta: float, bound: float | None = None) -> dict[str, Tensor]:
    """What backprop does in one layer of the mean-of-tanh network (``agents.backprop_net``).

    x [S, A] inputs, e [S, B] errors at the outputs, w [S, B, A] weights, b [S, B] biases.
    Returns ``y`` [S, B] (forward), ``delta`` [S, A] (error sent down), ``w_new``, ``b_new``
    (clipped to +-bound when one is given).
    """
    delta, w_new, b_new = layer_backward(x, e, w, b, eta, bound)
    return {"y": layer_forward(x, w, b), "delta": delta, "w_new": w_new, "b_new": b_new}


def target_bound(config: CloningConfig) -> float | None:
    """The clip of the target weights and biases (``config.bound_updates``), or None."""
    return 0.99 * config.weight_scale if config.bound_updates else None


def _inputs(config: CloningConfig, generator: torch.Generator, shape: tuple[int, ...]) -> Tensor:
    """Inputs x of the training connections (see ``CloningConfig.inputs``)."""
    x = torch.randn(shape, generator=generator) * config.x_std
    if config.inputs == "mixed":
        kind = torch.randint(3, shape, generator=generator)
        x = torch.where(kind == 1, 0.0, torch.where(kind == 2, torch.rand(shape, generator=generator), x))
    return x


def _errors(config: CloningConfig, generator: torch.Generator, shape: tuple[int, ...]) -> Tensor:
    """Errors at the outputs: half small and large uniform ones over four decades of size,
    half as a softmax output gives them (p - onehot of random logits and labels, over the
    last axis, or over 10 classes for a single output)."""
    magnitude = config.error_scale * 10 ** (-1.3 * torch.rand(shape, generator=generator))
    uniform = (2 * torch.rand(shape, generator=generator) - 1) * magnitude
    classes = max(shape[-1], 10) if len(shape) > 1 else 10
    logits = torch.randn(*shape[:-1], classes, generator=generator) * 3 * torch.rand(*shape[:-1], 1, generator=generator)
    p = torch.softmax(logits, dim=-1)
    label = torch.randint(classes, shape[:-1], generator=generator)
    softmax = p - F.one_hot(label, classes).to(p.dtype)
    if shape[-1] == 1:  # one output: any class's error component
        softmax = softmax.gather(-1, torch.randint(classes, (*shape[:-1], 1), generator=generator))
    else:
        softmax = softmax[..., : shape[-1]]
    pick = torch.rand(shape, generator=generator) < 0.5
    return torch.where(pick, uniform, softmax)


def _decode(c: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Weights [S, B, A] and per-connection biases [S, B, A] from layer cell states [S, N, B, A]."""
    w_slots, b_slots = weight_slots(c.shape[1])
    return scale * c[:, w_slots].mean(1), scale * c[:, b_slots].mean(1)


def _update_error(c_new: Tensor, w_target: Tensor, b_target: Tensor, scale: float, eta: float, slot_weight: float = 0.0) -> Tensor:
    """Mean squared error of the new weights and biases, in units of eta; with ``slot_weight``,
    plus that times the mean squared spread of the weight (and bias) slots around their mean,
    in the same units: the decode reads only the mean, so without it the slots may part in
    opposite directions unseen, until h = o tanh(c) saturates in each of them."""
    w_new, b_new = _decode(c_new, scale)
    err = (((w_new - w_target) / eta) ** 2).mean() + (((b_new - b_target) / eta) ** 2).mean()
    if slot_weight:
        for slots in weight_slots(c_new.shape[1]):
            part = c_new[:, slots]
            err = err + slot_weight * (((part - part.mean(1, keepdim=True)) * scale / eta) ** 2).mean()
    return err


def shallow_loss(agent: VSML, buffer: StateBuffer, config: CloningConfig, g: torch.Generator) -> tuple[Tensor, dict]:
    """Independent connections: one forward and one backward tick each, against the targets."""
    s, k, msg, scale, eta = config.connections, config.minibatch, config.msg_size, agent.weight_scale, config.eta
    h0, c0 = buffer.sample(s)
    h = h0.repeat_interleave(k, 0)[:, :, None, None]
    c = c0.repeat_interleave(k, 0)[:, :, None, None]
    x = _inputs(config, g, (s * k, 1))
    e = _errors(config, g, (s * k, 1))
    w, b_conn = _decode(c, scale)  # [S*k, 1, 1] each
    b = b_conn[:, :, 0]
    target = backprop_targets(x, e, w, b, eta, target_bound(config))
    zeros = torch.zeros(s * k, 1, msg)
    _, _, fwd, _ = tick(agent, False, h, c, _pad(x, msg), zeros)
    h_new, c_new, _, bwd = tick(agent, True, h, c, _pad(x, msg), _pad(e, msg))
    # a mini-batch: the new states of one state's k data points are averaged
    h_new = h_new.reshape(s, k, -1).mean(dim=1)
    c_new = c_new.reshape(s, k, -1).mean(dim=1)
    w_t = target["w_new"].reshape(s, k).mean(dim=1)
    b_t = target["b_new"].reshape(s, k).mean(dim=1)
    fwd_err = ((fwd[:, 0, 0] - target["y"][:, 0]) ** 2).mean()
    bwd_err = ((bwd[:, 0, 0] - target["delta"][:, 0]) ** 2).mean()
    upd_err = _update_error(c_new[:, :, None, None], w_t[:, None, None], b_t[:, None, None], scale, eta, config.slot_weight)
    buffer.push(h_new, c_new)
    loss = fwd_err + bwd_err + config.update_weight * upd_err
    return loss, {"forward": fwd_err.item(), "backward": bwd_err.item(), "update": upd_err.item()}


def _connection_weights(c: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Weight and bias [S, 1] each of single connections with cell states c [S, N, 1, 1]."""
    w, b = _decode(c, scale)
    return w[:, :, 0], b[:, :, 0]


def _exact_update(config: CloningConfig, g: torch.Generator, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Fresh x and e [S, 1] for single connections with weights w and biases b [S, 1], and what
    exact backprop does with them (:func:`backprop_targets`)."""
    x = _inputs(config, g, tuple(w.shape))
    e = _errors(config, g, tuple(w.shape))
    return x, e, backprop_targets(x, e, w[:, :, None], b, config.eta, target_bound(config))


def chain_loss(agent: VSML, buffer: StateBuffer, config: CloningConfig, g: torch.Generator) -> tuple[Tensor, dict]:
    """Independent connections through ``chain_length`` updates, each with fresh x and e: the
    forward and backward messages and the new weights are scored at every step against exact
    backprop run from the same starting weights, and the loss is backpropagated through the
    whole chain. The last states go back into the buffer."""
    s, steps, msg, scale, eta = config.chain_connections, config.chain_length, config.msg_size, agent.weight_scale, config.eta
    h, c = (t[:, :, None, None] for t in buffer.sample(s))
    w, b = _connection_weights(c, scale)  # the exact chain starts from the weights the states hold
    zeros = torch.zeros(s, 1, msg)
    fwd_err = bwd_err = upd_err = torch.zeros(())
    for _ in range(steps):  # a chain of updates is sequential
        x, e, target = _exact_update(config, g, w, b)
        _, _, fwd, _ = tick(agent, False, h, c, _pad(x, msg), zeros)
        h, c, _, bwd = tick(agent, True, h, c, _pad(x, msg), _pad(e, msg))
        w, b = target["w_new"][:, :, 0], target["b_new"]
        fwd_err = fwd_err + ((fwd[:, 0, 0] - target["y"][:, 0]) ** 2).mean()
        bwd_err = bwd_err + ((bwd[:, 0, 0] - target["delta"][:, 0]) ** 2).mean()
        upd_err = upd_err + _update_error(c, w[:, :, None], b[:, :, None], scale, eta, config.slot_weight)
    fwd_err, bwd_err, upd_err = fwd_err / steps, bwd_err / steps, upd_err / steps
    buffer.push(_flat_state(h), _flat_state(c))
    loss = fwd_err + bwd_err + config.update_weight * upd_err
    return loss, {"forward": fwd_err.item(), "backward": bwd_err.item(), "update": upd_err.item()}


@torch.no_grad()
def chain_drift(agent: VSML, config: CloningConfig, steps: int, count: int = 4096, seed: int = 0) -> dict[str, float]:
    """How far the weights a cloned rule holds drift from exact backprop's over ``steps``
    updates with random x and e, from fresh states: the mean |w_clone - w_exact| and, for
    scale, the mean |w_exact - w_start| (how far the updates moved the weights)."""
    g = torch.Generator().manual_seed(seed)
    h, c = (t[:, :, None, None] for t in fresh_states(config, count, g).unbind(1))
    scale, msg = agent.weight_scale, agent.msg_size
    w, b = _connection_weights(c, scale)
    start = w  # the updates below make new tensors
    for _ in range(steps):
        x, e, target = _exact_update(config, g, w, b)
        h, c, _, _ = tick(agent, True, h, c, _pad(x, msg), _pad(e, msg))
        w, b = target["w_new"][:, :, 0], target["b_new"]
    w_clone = _connection_weights(c, scale)[0]
    return {"steps": steps, "clone_gap": (w_clone - w).abs().mean().item(), "exact_change": (w - start).abs().mean().item()}


@torch.no_grad()
def deployment_drift(agent: VSML, env, eta: float, steps: int, seed: int = 0, every: int = 100) -> list[dict[str, float]]:
    """How far a one-layer cloned rule's weights drift from exact backprop's on a real stream.

    Runs the rule on ``env`` (a vector env, e.g. ``gym.make_vec("rulegym/MNIST-v0", 8)``) and,
    beside it, exact backprop (``tanh_backprop`` with the rule's ``eta``) started from the weights the rule's initial
    states hold and fed the same observations -- the errors of the rule's own predictions -- so
    the gap is only the rule's update error, compounded. Every ``every`` steps: the mean |w| of
    both and the mean |w_rule - w_exact|. ``seed`` seeds the env and the rule's initial weights.
    """
    from rulegym.agents.backprop_net import TanhBackprop
    from rulegym.train.loop import _to_torch

    if agent.n_layers != 1:
        raise ValueError(f"deployment_drift compares one-layer rules, this one has {agent.n_layers} layers.")
    obs, _ = env.reset(seed=seed)
    lifetimes = obs["x"].shape[0]
    exact = TanhBackprop(agent.x_dim, agent.n_classes, lr=eta)
    state = agent.initial_state(lifetimes, generator=torch.Generator().manual_seed(seed))
    w0, b0 = agent.decode_weights(state, 0)
    exact_state = {**exact.initial_state(lifetimes), "w0": w0.clone(), "b0": b0.clone()}
    rows = []
    for t in range(1, steps + 1):
        o = _to_torch(obs, torch.device("cpu"))
        logits, state = agent.step(o, state)
        _, exact_state = exact.step(o, exact_state)
        obs, *_ = env.step(logits.numpy())
        if t % every == 0 or t == steps:
            w, _ = agent.decode_weights(state, 0)
            rows.append({"step": t, "rule_abs_w": w.abs().mean().item(), "exact_abs_w": exact_state["w0"].abs().mean().item(),
                         "gap": (w - exact_state["w0"]).abs().mean().item()})
    return rows


@torch.no_grad()
def deployed_states(agent: VSML, options: dict, env, steps: int, count: int, generator: torch.Generator, seed: int) -> tuple[Tensor, Tensor]:
    """``count`` connection states (h, c) [count, N] the rule reaches learning online on ``env``
    (a vector env; a VSML with ``options`` -- ``hidden`` layers included -- at the env's sizes and
    ``agent``'s meta-parameters), drawn uniformly over its lifetimes' steps, evenly over its
    layers and uniformly over each layer's connections."""
    from rulegym.train.loop import _to_torch

    obs, _ = env.reset(seed=seed)
    lifetimes, x_dim = obs["x"].shape
    n_classes = obs["y_prev"].shape[1]
    rule = make_agent("vsml", x_dim, n_classes, **options)
    rule.load_state_dict(agent.state_dict())
    state = rule.initial_state(lifetimes, generator=generator)
    when = torch.randint(1, steps + 1, (count,), generator=generator)
    # (a one-layer rule draws no layers, so its draws, and the rules made with it, stay as they were)
    layer = torch.randint(rule.n_layers, (count,), generator=generator) if rule.n_layers > 1 else torch.zeros(count, dtype=torch.long)
    picked_h, picked_c = [], []
    for t in range(1, steps + 1):
        logits, state = rule.step(_to_torch(obs, torch.device("cpu")), state)
        obs, *_ = env.step(logits.numpy())
        for k in range(rule.n_layers):
            n = int(((when == t) & (layer == k)).sum())
            if n:
                h, c = _flat_state(state[f"h{k}"]), _flat_state(state[f"c{k}"])
                idx = torch.randint(h.shape[0], (n,), generator=generator)
                picked_h.append(h[idx])
                picked_c.append(c[idx])
    return torch.cat(picked_h), torch.cat(picked_c)


def deep_loss(agent: VSML, buffer: StateBuffer, config: CloningConfig, g: torch.Generator, own: bool) -> tuple[Tensor, dict]:
    """Two-layer networks; the second layer reads the true (``own=False``) or the VSML's own
    hidden activations, the first the true or the VSML's own backpropagated error."""
    s, msg, scale, eta = config.networks, config.msg_size, agent.weight_scale, config.eta
    n_in, n_hid, n_out = config.deep_sizes
    h1, c1 = _layer_state(*buffer.sample(s * n_hid * n_in), (s, n_hid, n_in))
    h2, c2 = _layer_state(*buffer.sample(s * n_out * n_hid), (s, n_out, n_hid))
    x = _inputs(config, g, (s, n_in))
    e = _errors(config, g, (s, n_out))
    w1, b1c = _decode(c1, scale)
    w2, b2c = _decode(c2, scale)
    b1, b2 = b1c.mean(dim=-1), b2c.mean(dim=-1)
    # ground truth: the forward pass, then backprop from e
    bound = target_bound(config)
    t2 = backprop_targets(layer_forward(x, w1, b1), e, w2, b2, eta, bound)
    t1 = backprop_targets(x, t2["delta"], w1, b1, eta, bound)
    m1 = _pad(x, msg)
    _, _, fwd1, _ = tick(agent, False, h1, c1, m1, torch.zeros(s, n_hid, msg))
    m2 = fwd1 if own else _pad(t1["y"], msg)
    _, _, fwd2, _ = tick(agent, False, h2, c2, m2, torch.zeros(s, n_out, msg))
    h2n, c2n, _, bwd2 = tick(agent, True, h2, c2, m2, _pad(e, msg))
    d1 = bwd2 if own else _pad(t2["delta"], msg)
    h1n, c1n, _, _ = tick(agent, True, h1, c1, m1, d1)
    fwd_err = ((fwd1[..., 0] - t1["y"]) ** 2).mean() + ((fwd2[..., 0] - t2["y"]) ** 2).mean()
    bwd_err = ((bwd2[..., 0] - t2["delta"]) ** 2).mean()
    # per connection: the weight target, and the bias target of its output (each holds a copy)
    b2_new, b1_new = b2c - eta * e[:, :, None], b1c - eta * t2["delta"][:, :, None]
    if bound is not None:  # as backprop_targets clips the weights
        b2_new, b1_new = b2_new.clamp(-bound, bound), b1_new.clamp(-bound, bound)
    upd_err = _update_error(c2n, t2["w_new"], b2_new, scale, eta, config.slot_weight)
    upd_err = upd_err + _update_error(c1n, t1["w_new"], b1_new, scale, eta, config.slot_weight)
    buffer.push(_flat_state(h1n), _flat_state(c1n))
    buffer.push(_flat_state(h2n), _flat_state(c2n))
    loss = fwd_err + bwd_err + config.update_weight * upd_err
    return loss, {"forward": fwd_err.item(), "backward": bwd_err.item(), "update": upd_err.item()}


# ---------------------------------------------------------------------------- training
def train_cloning(config: CloningConfig, agent: VSML | None = None, log=None) -> tuple[VSML, list[dict]]:
    """Run the curriculum; returns the cloned VSML and the loss history (one row per log step).

    Non-finite losses skip the update (counted in the history). ``log(row)`` is called for
    every logged row.
    """
    config.check()
    torch.manual_seed(config.seed)
    agent = agent if agent is not None else make_cloned_vsml(config)
    check_cloned(agent, config)
    g = torch.Generator().manual_seed(config.seed)
    buffer = StateBuffer(config, g)
    params = [p for p in agent.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr)
    total = max(1, sum(int(i) for i in config.iterations))

    def schedule(step: int) -> float:
        return config.lr_final + (1 - config.lr_final) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    deploy_env = None
    if config.deploy_env is not None:
        import gymnasium as gym

        deploy_env = gym.make_vec(config.deploy_env, num_envs=config.deploy_lifetimes, lifetime_length=config.deploy_steps)
    history: list[dict] = []
    skipped = 0
    start = time.perf_counter()
    step = 0
    for stage, iters in zip(STAGES, config.iterations):
        for i in range(int(iters)):
            if deploy_env is not None and step % config.deploy_every == 0:
                seed = config.seed * 2**20 + step // config.deploy_every
                options = {**cloned_options(config), "hidden": tuple(config.deploy_hidden)}
                buffer.push(*deployed_states(agent, options, deploy_env, config.deploy_steps, config.deploy_states, g, seed))
            if stage == "shallow":
                loss, parts = shallow_loss(agent, buffer, config, g)
            elif stage == "chain":
                loss, parts = chain_loss(agent, buffer, config, g)
            else:
                loss, parts = deep_loss(agent, buffer, config, g, own=stage == "deep_own")
            opt.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                skipped += 1
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                opt.step()
            sched.step()
            step += 1
            if i % config.log_every == 0 or i == iters - 1:
                row = {"step": step, "stage": stage, "loss": loss.item(), **parts, "skipped": skipped, "seconds": round(time.perf_counter() - start, 2)}
                history.append(row)
                if log is not None:
                    log(row)
    if deploy_env is not None:
        deploy_env.close()
    return agent, history


@torch.no_grad()
def cloning_error_grid(agent: VSML, xs: Tensor, ws: Tensor) -> tuple[Tensor, Tensor]:
    """Figure 10: the forward message a fresh connection with weight w (bias 0) produces for
    input x, against tanh(x) w, over the grid ``xs`` x ``ws``; returns (produced, target),
    each [len(ws), len(xs)]."""
    msg, scale = agent.msg_size, agent.weight_scale
    ww, xx = torch.meshgrid(ws, xs, indexing="ij")
    count = ww.numel()
    c = torch.zeros(count, agent.state_size, 1, 1)
    c[:, weight_slots(agent.state_size)[0], 0, 0] = (ww.reshape(-1, 1) / scale).clamp(-0.99, 0.99)
    h = c.clone()
    _, _, fwd, _ = tick(agent, False, h, c, _pad(xx.reshape(-1, 1), msg), torch.zeros(count, 1, msg))
    return fwd[:, 0, 0].reshape(ww.shape), torch.tanh(xx) * ww


def plot_error_grid(agent: VSML, path: Path, xs: Tensor | None = None, ws: Tensor | None = None) -> dict:
    """Save the Figure 10 heat maps (target, produced, |error|) as PNG and SVG; returns the
    mean and max absolute error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = xs if xs is not None else torch.linspace(-3, 3, 61)
    ws = ws if ws is not None else torch.linspace(-3.5, 3.5, 71)
    produced, target = cloning_error_grid(agent, xs, ws)
    err = (produced - target).abs()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    extent = (xs[0].item(), xs[-1].item(), ws[0].item(), ws[-1].item())
    lim = target.abs().max().item()
    for ax, data, title, cmap, vmin, vmax in (
        (axes[0], target, "target tanh(x)·w", "coolwarm", -lim, lim),
        (axes[1], produced, "cloned VSML forward message", "coolwarm", -lim, lim),
        (axes[2], err, "|produced − target|", "viridis", 0, None),
    ):
        im = ax.imshow(data.numpy(), origin="lower", aspect="auto", extent=extent, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(title)
        ax.set_xlabel("input x")
        ax.set_ylabel("weight w")
        fig.colorbar(im, ax=ax)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path.with_suffix(".png"), dpi=110)
    fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)
    return {"mean_abs_error": err.mean().item(), "max_abs_error": err.max().item()}


def _sizes(text: str, flag: str) -> tuple:
    """Layer sizes from a command-line value like "32" or "32,16" ("" -> ())."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{flag} must be layer sizes like 32 or 32,16, got {text!r}.") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="run folder (meta-parameters, history, Figure 10)")
    parser.add_argument("--iterations", default="3000,0,1500,1500", help="per stage: shallow,chain,deep_truth,deep_own")
    parser.add_argument("--chain-length", type=int, default=CloningConfig.chain_length, help="updates per state in the chain stage")
    parser.add_argument("--weight-scale", type=float, default=CloningConfig.weight_scale, help="weight = scale x mean of its cell slots")
    parser.add_argument("--train-weight-std", type=float, default=CloningConfig.train_weight_std, help="spread of the fresh training states' weights")
    parser.add_argument("--inputs", choices=INPUT_DISTRIBUTIONS, default=CloningConfig.inputs, help="training inputs: normal, or mixed (a third each normal, 0, U(0,1))")
    parser.add_argument("--bound-updates", action="store_true", help="clip the target weights and biases to +-0.99 x the weight scale")
    parser.add_argument("--deploy-env", metavar="ENV_ID", help="also train on the states the rule reaches learning online on this env (e.g. rulegym/Digits-v0)")
    parser.add_argument("--deploy-every", type=int, default=CloningConfig.deploy_every, help="iterations between refills of deployed states")
    parser.add_argument("--deploy-hidden", metavar="SIZES", default="", help="hidden layer sizes of the deployed networks, e.g. 32 (default: one layer)")
    parser.add_argument("--deploy-steps", type=int, default=CloningConfig.deploy_steps, help="steps of each deployed lifetime (states are drawn over all of them)")
    parser.add_argument("--slot-weight", type=float, default=CloningConfig.slot_weight, help="loss weight of the spread of a state's weight slots (units of eta)")
    parser.add_argument("--init", metavar="RULE", help="start from this shipped cloned rule, or a run folder holding meta_params.pt")
    parser.add_argument("--eta", type=float, default=CloningConfig.eta)
    parser.add_argument("--lr", type=float, default=CloningConfig.lr)
    parser.add_argument("--minibatch", type=int, default=1)
    parser.add_argument("--connections", type=int, default=CloningConfig.connections, help="connections per shallow step")
    parser.add_argument("--networks", type=int, default=CloningConfig.networks, help="networks per deep step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ship", metavar="NAME", help="also save as the pretrained rule NAME in the package's rules folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        iterations = tuple(int(v) for v in args.iterations.split(","))
    except ValueError:
        parser.error(f"--iterations must be {len(STAGES)} integers like 3000,0,1500,1500, got {args.iterations!r}")
    try:
        config = CloningConfig(iterations=iterations, eta=args.eta, lr=args.lr, minibatch=args.minibatch, seed=args.seed,
                               connections=args.connections, networks=args.networks, chain_length=args.chain_length, inputs=args.inputs,
                               weight_scale=args.weight_scale, train_weight_std=args.train_weight_std, bound_updates=args.bound_updates,
                               deploy_env=args.deploy_env, deploy_every=args.deploy_every, slot_weight=args.slot_weight,
                               deploy_hidden=_sizes(args.deploy_hidden, "--deploy-hidden"), deploy_steps=args.deploy_steps)
        config.check()
    except ValueError as err:
        parser.error(str(err))
    if args.init and args.ship == args.init:
        parser.error(f"--ship {args.ship!r} would overwrite the rule --init starts from; ship under another name.")
    if args.ship is not None and not args.ship.isidentifier():
        parser.error(f"--ship takes a rule name that is a Python identifier (e.g. my_clone), got {args.ship!r}.")
    if (args.out / "meta_params.pt").exists():  # a finished run is not overwritten
        parser.error(f"{args.out} already holds a cloning run (meta_params.pt); use another --out, or move it away to run again.")

    def log(row: dict) -> None:
        print(json.dumps(row), flush=True)

    agent = None
    if args.init:
        try:
            agent = initial_clone(config, args.init)
        except (ValueError, FileNotFoundError) as err:
            parser.error(str(err))
    args.out.mkdir(parents=True, exist_ok=True)
    agent, history = train_cloning(config, agent=agent, log=log)
    drift = [chain_drift(agent, config, steps) for steps in (100, 300)]
    log({"chain_drift": drift})
    grid = plot_error_grid(agent, args.out / "fig10_cloning_error")
    summary = {"config": asdict(config), "init": args.init, "agent_options": cloned_options(config),
               "history": history, "fig10": grid, "chain_drift": drift}
    # the summary (which --init reads the options from) first, then the parameters; each atomically
    tmp = args.out / "cloning.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(args.out / "cloning.json")
    tmp = args.out / "meta_params.pt.tmp"
    torch.save(agent.state_dict(), tmp)
    tmp.replace(args.out / "meta_params.pt")
    if args.ship:
        ship(agent, args.ship, config, grid, history, " ".join(["python -m rulegym.learners.cloning", *(argv or sys.argv[1:])]), drift, args.init)
    print(json.dumps({"done": True, "fig10": grid}))


def initial_clone(config: CloningConfig, source: str) -> VSML:
    """A cloning VSML holding the meta-parameters of a shipped rule or of ``source/meta_params.pt``
    (a cloning run folder). The source's VSML options must be those ``config`` trains with:
    ``weight_scale`` and ``init_weight_std`` are not in the meta-parameters, so a mismatch
    would silently change what the states mean."""
    from rulegym.agents.pretrained import PRETRAINED

    if source in PRETRAINED:
        path, options = PRETRAINED[source].checked_path(), dict(PRETRAINED[source].options)
    else:
        path, summary = Path(source) / "meta_params.pt", Path(source) / "cloning.json"
        if not path.is_file():
            raise FileNotFoundError(f"--init {source!r} is neither a shipped rule ({', '.join(sorted(PRETRAINED))}) nor a run folder with meta_params.pt.")
        try:
            options = json.loads(summary.read_text())["agent_options"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"--init {source!r}: its cloning.json, which says what VSML options the rule was cloned with, "
                             f"cannot be read ({type(err).__name__}: {err}); run that cloning again.") from None
    wanted = cloned_options(config)
    differ = {k: (options.get(k), wanted.get(k)) for k in sorted(set(options) | set(wanted)) if options.get(k) != wanted.get(k)}
    if differ:
        details = ", ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in differ.items())
        raise ValueError(f"--init {source!r} was cloned with other VSML options ({details}); train with the same settings.")
    agent = make_cloned_vsml(config)
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        agent.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"--init {source!r} does not hold a cloned VSML with state_size={config.state_size}, msg_size={config.msg_size}: {err}") from None
    return agent


def ship(agent: VSML, name: str, config: CloningConfig, grid: dict, history: list[dict], command: str,
         drift: list[dict] | None = None, init: str | None = None) -> Path:
    """Write the cloned rule into the package's rules folder (parameters and manifest)."""
    from rulegym.agents.pretrained import ship_rule

    last = {stage: next(row for row in reversed(history) if row["stage"] == stage) for stage in STAGES if any(r["stage"] == stage for r in history)}
    manifest = {
        "agent": "vsml",
        "agent_options": cloned_options(config),
        "description": f"VSML cloned from backprop (eta={config.eta}): sub-LSTMs trained to run a mean-of-tanh network's forward pass, backward pass and SGD update; compare with tanh_backprop lr={config.eta}",
        "in_default_compare": False,
        "training": {"command": command, "config": asdict(config), **({"init": init} if init else {})},
        "metrics": {"fig10": grid, "final_losses": last, **({"chain_drift": drift} if drift else {})},
    }
    return ship_rule(name, agent.state_dict(), manifest)


if __name__ == "__main__":
    main()

"""What every learner shares: the agent, the task mixture, Adam, seeds, evaluation and state.

A learner owns its meta-parameters (the agent's ``nn.Parameter`` s), a ``torch.optim.Adam``,
a ``torch.Generator`` from which every per-iteration seed is drawn, and the data position
(how many training lifetimes have been consumed). ``train_step`` runs one meta-iteration and
returns its metrics; ``state_dict``/``load_state_dict`` carry everything the next iteration
depends on, so a resumed run continues exactly where the stopped one was.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rulegym.agents import make_agent
from rulegym.agents.base import Agent
from rulegym.learners.config import LearnerConfig
from rulegym.learners.distributed import DistContext
from rulegym.learners.tasks import TaskMixture, _probe, eval_seed_base, train_seed_base

__all__ = ["Learner", "derive_seed"]


def derive_seed(*words: int) -> int:
    """A well-mixed 63-bit seed from integers (e.g. iteration seed, pair index, stream tag)."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2, np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) & (2**63 - 1))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class Learner:
    """Base class of the BPTT and ES learners (see their modules)."""

    name = ""

    def __init__(self, config: LearnerConfig, dist: DistContext | None = None, device: str | torch.device | None = None):
        self.config = config
        self.dist = dist or DistContext()
        self.device = torch.device(device if device is not None else config.device)
        self.mixture = TaskMixture(config.tasks, config.seed)
        self.eval_specs = list(config.eval_tasks) or list(config.tasks)
        self.eval_dims = [(self.mixture.x_dim, self.mixture.n_classes)] * len(self.eval_specs)
        if config.eval_tasks:
            self.eval_dims = [(i.x_dim, i.n_classes) for i in (_probe(s) for s in config.eval_tasks)]
        seed_everything(config.seed)
        self.agent: Agent = make_agent(config.agent, self.mixture.x_dim, self.mixture.n_classes, **config.agent_options)
        if config.init is not None:
            initial = initial_meta_params(config)
            try:
                self.agent.load_state_dict(initial)
            except RuntimeError as err:
                raise ValueError(f"init {config.init!r} does not fit this {config.agent} (x_dim={self.mixture.x_dim}, n_classes={self.mixture.n_classes}): {err}") from None
        self.agent.to(self.device)
        if not getattr(self.agent, "differentiable", True):
            raise ValueError(f"agent {config.agent!r} is not a differentiable torch module; {self.name} cannot meta-train it.")
        self.params = [p for p in self.agent.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"agent {config.agent!r} has no meta-parameters to train.")
        self.dist.broadcast_module(self.agent)
        self._eval_agents: dict[tuple[int, int], Agent] = {(self.agent.x_dim, self.agent.n_classes): self.agent}
        with torch.random.fork_rng(devices=[]):  # building them must not shift the training RNG
            for dims, spec in zip(self.eval_dims, self.eval_specs):
                if dims not in self._eval_agents:
                    self._eval_agents[dims] = self._agent_for(dims, spec)
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.generator = torch.Generator().manual_seed(int(config.seed))
        self.seed_base = train_seed_base(config.seed)
        self.step = 0
        self.data_position = 0
        self.skipped_updates = 0

    # ------------------------------------------------------------------ helpers
    @property
    def num_meta_params(self) -> int:
        return sum(p.numel() for p in self.params)

    def draw_seed(self) -> int:
        """The next per-iteration seed (same on every rank: every rank draws the same sequence)."""
        return int(torch.randint(0, 2**62, (1,), generator=self.generator).item())

    def flat_params(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def set_flat_grad(self, flat: Tensor) -> None:
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
            offset += n

    def apply_update(self, flat_grad: Tensor) -> float:
        """Adam step with ``flat_grad`` (clipped when configured); returns the pre-clip norm."""
        norm = float(flat_grad.norm())
        self.set_flat_grad(flat_grad)
        clip = getattr(self.config, "grad_clip", None)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    # ------------------------------------------------------------------ evaluation
    def _agent_for(self, dims: tuple[int, int], spec) -> Agent:
        """An agent of other input/output sizes sharing the meta-parameters (e.g. VSML, whose
        meta-parameters do not depend on the sizes), for evaluating on tasks of those sizes."""
        other = make_agent(self.config.agent, dims[0], dims[1], **self.config.agent_options).to(self.device)
        mine = {k: tuple(v.shape) for k, v in self.agent.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in other.state_dict().items()}
        if mine != theirs:
            raise ValueError(
                f"eval task {spec.env_id} {spec.options or ''} gives x_dim={dims[0]}, n_classes={dims[1]} but the training "
                f"tasks give x_dim={self.mixture.x_dim}, n_classes={self.mixture.n_classes}, and agent {self.config.agent!r} "
                "has meta-parameters whose shapes depend on these sizes; give the eval task the training sizes "
                "(options such as resize, x_shape, n_classes)."
            )
        return other

    def evaluate(self) -> dict[str, float]:
        """Online accuracy and loss on held-out lifetimes of every eval task (no gradients)."""
        from rulegym.train.loop import evaluate

        out: dict[str, float] = {}
        base = eval_seed_base(self.config.eval_seed)
        labels = [s.label() for s in self.eval_specs]
        for i, spec in enumerate(self.eval_specs):
            name = labels[i] if labels.count(labels[i]) == 1 else f"{labels[i]}#{i}"
            agent = self._eval_agents[self.eval_dims[i]]
            if agent is not self.agent:
                agent.load_state_dict(self.agent.state_dict())
            res = evaluate(
                agent,
                spec.env_id,
                num_envs=self.config.eval_lifetimes,
                seed=base,
                env_options=spec.options,
                device=self.device,
            )
            out[f"meta_test/{name}/accuracy"] = float(res.accuracy())
            out[f"meta_test/{name}/loss"] = float(res.mean_loss())
        return out

    # ------------------------------------------------------------------ state
    def train_step(self) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {
            "learner_name": self.name,
            "step": self.step,
            "meta_params": {k: v.detach().cpu().clone() for k, v in self.agent.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "learner": {
                "generator": self.generator.get_state(),
                "data_position": self.data_position,
                "skipped_updates": self.skipped_updates,
            },
        }

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        if payload.get("learner_name") != self.name:
            raise ValueError(f"checkpoint is from learner {payload.get('learner_name')!r}, not {self.name!r}.")
        self.agent.load_state_dict(payload["meta_params"])
        self.optimizer.load_state_dict(payload["optimizer"])
        state = payload["learner"]
        self.generator.set_state(state["generator"])
        self.data_position = int(state["data_position"])
        self.skipped_updates = int(state["skipped_updates"])
        self.step = int(payload["step"])

    def close(self) -> None:
        self.mixture.close()


def initial_meta_params(config: LearnerConfig) -> dict[str, Tensor]:
    """The meta-parameters ``config.init`` names: a shipped rule, or a run folder (its latest
    checkpoint's, which a run still going or resumed has newer than its ``meta_params.pt``;
    else its ``meta_params.pt``). The source must be the same agent built
    with the same options, since options that are not meta-parameters (gate biases, sizes,
    scales) change what the meta-parameters mean."""
    from rulegym.agents.pretrained import PRETRAINED
    from rulegym.learners import checkpoint as ckpt

    source = config.init
    if source in PRETRAINED:
        info = PRETRAINED[source]
        agent, options, newest, in_checkpoint = info.agent, dict(info.options), info.checked_path(), False
    else:
        folder = Path(source)
        in_checkpoint = (folder / ckpt.CHECKPOINT_NAME).is_file()
        newest = folder / (ckpt.CHECKPOINT_NAME if in_checkpoint else "meta_params.pt")
        if not (folder / "config.json").is_file() or not newest.is_file():
            raise FileNotFoundError(
                f"init {source!r} is neither a shipped rule ({', '.join(sorted(PRETRAINED))}) nor a run folder holding "
                "config.json and meta_params.pt or a checkpoint; give a rule's name or a meta-training run's folder."
            )
        there = json.loads((folder / "config.json").read_text())
        agent, options = there.get("agent"), dict(there.get("agent_options", {}))
    # the source's options were read from JSON: compare with this config's as JSON has them (tuples as lists)
    if agent != config.agent or options != config.to_dict()["agent_options"]:
        raise ValueError(
            f"init {source!r} is a {agent} with options {options}, but this run trains a {config.agent} with options "
            f"{config.agent_options}; set agent and agent_options to the source's."
        )
    if in_checkpoint:
        return ckpt.load_checkpoint(newest)["meta_params"]
    return torch.load(newest, map_location="cpu", weights_only=True)


def finite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x)

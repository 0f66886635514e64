"""Pretrained rules shipped inside the package, loadable by name.

Each rule is a pair of files in ``agents/rules/``: ``<name>.pt`` (the meta-parameters, an
agent state_dict, loaded with ``weights_only=True``) and ``<name>.json`` (the agent name and
options it was built with, the command and config that trained it, and its measured metrics).
A rule's meta-parameters do not depend on the input or output size for learned-rule agents
such as VSML, so one rule runs on any task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

RULES_DIR = Path(__file__).with_name("rules")


@dataclass(frozen=True)
class PretrainedInfo:
    """What a shipped rule is: its agent, how it was trained, what it scored."""

    name: str
    agent: str
    options: dict[str, Any]
    description: str
    in_default_compare: bool
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return RULES_DIR / f"{self.name}.pt"


def _discover() -> dict[str, PretrainedInfo]:
    found: dict[str, PretrainedInfo] = {}
    if not RULES_DIR.is_dir():
        return found
    for manifest in sorted(RULES_DIR.glob("*.json")):
        meta = json.loads(manifest.read_text())
        name = manifest.stem
        found[name] = PretrainedInfo(
            name=name,
            agent=meta["agent"],
            options=dict(meta.get("agent_options", {})),
            description=meta.get("description", ""),
            in_default_compare=bool(meta.get("in_default_compare", False)),
            meta=meta,
        )
    return found


PRETRAINED: dict[str, PretrainedInfo] = _discover()


def load_pretrained(name: str, x_dim: int, n_classes: int, **options: Any):
    """Build the rule's agent for ``x_dim`` inputs and ``n_classes`` classes and load its
    meta-parameters. ``options`` override the agent options it was trained with (e.g. a
    different number of ticks), as long as the meta-parameter shapes still match."""
    from rulegym.agents import make_agent

    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained rule {name!r}; shipped rules: {', '.join(sorted(PRETRAINED)) or 'none'}.")
    info = PRETRAINED[name]
    if not info.path.is_file():
        raise FileNotFoundError(f"pretrained rule {name!r} is missing its parameters file {info.path}; reinstall rulegym.")
    agent = make_agent(info.agent, x_dim, n_classes, **{**info.options, **options})
    state = torch.load(info.path, map_location="cpu", weights_only=True)
    missing, unexpected = agent.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"pretrained rule {name!r} does not fit a {info.agent} built for x_dim={x_dim}, n_classes={n_classes} "
            f"(missing {missing}, unexpected {unexpected}); it only runs where its meta-parameters are size-independent."
        )
    return agent

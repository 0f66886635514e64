"""Agents by name, so configs and the CLI can say ``agent: meta_rnn``.

Each entry is a builder ``(x_dim, n_classes, **options) -> Agent``; options are the builder's
keyword arguments, checked so a typo gets a clear error listing the valid ones.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from rulegym.agents.base import Agent

AGENTS: dict[str, Callable[..., Agent]] = {}


def register_agent(name: str) -> Callable[[Callable[..., Agent]], Callable[..., Agent]]:
    """Class/function decorator adding a builder to :data:`AGENTS` under ``name``."""

    def add(builder: Callable[..., Agent]) -> Callable[..., Agent]:
        if name in AGENTS and AGENTS[name] is not builder:
            raise ValueError(f"agent name {name!r} is already registered to {AGENTS[name]!r}.")
        AGENTS[name] = builder
        return builder

    return add


def make_agent(name: str, x_dim: int, n_classes: int, **options: Any) -> Agent:
    """Build a registered agent for inputs of ``x_dim`` features and ``n_classes`` classes."""
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; registered agents: {', '.join(sorted(AGENTS))}.")
    builder = AGENTS[name]
    params = inspect.signature(builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            valid = ", ".join(p for p in params if p not in ("self", "x_dim", "n_classes"))
            raise TypeError(f"unknown option(s) {unknown} for agent {name!r}; valid options: {valid}.")
    return builder(x_dim, n_classes, **options)

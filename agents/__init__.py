"""rulegym.agents: the agent protocol, learned-rule agents and baselines."""

from rulegym.agents.base import (
    Agent,
    Obs,
    State,
    check_obs,
    check_state,
    population_step,
    reset_activations,
    stack_params,
)
from rulegym.agents.registry import AGENTS, make_agent, register_agent

# importing the agent modules registers them by name
# (sb3_adapter imports stable-baselines3 only when used, so registering it is cheap)
from rulegym.agents import backprop_net, class_means, fwm, hebbian, meta_rnn, online_optim, sb3_adapter, vsml, vsn  # noqa: F401  (isort: skip)

__all__ = [
    "AGENTS",
    "Agent",
    "Obs",
    "State",
    "check_obs",
    "check_state",
    "make_agent",
    "population_step",
    "register_agent",
    "reset_activations",
    "stack_params",
]

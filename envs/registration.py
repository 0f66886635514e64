"""Task names, env ids, and the entry points gymnasium calls.

Every env id names a task family plus default options; ``gym.make(id, **options)`` builds the
single env and ``gym.make_vec(id, num_envs=N, **options)`` the native vector env (gymnasium
picks our ``vector_entry_point``). Options are the keyword arguments of the task class.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium as gym

from rulegym.envs.char_stream import CharStreamTask
from rulegym.envs.image_stream import ImageStreamTask
from rulegym.envs.omniglot import OmniglotTask
from rulegym.envs.online_env import OnlineEnv, OnlineVectorEnv
from rulegym.envs.protocol import Task
from rulegym.envs.synthetic import RandomTask, SumSignTask

#: task family name -> class; the class's keyword arguments are the task's options
TASKS: dict[str, Callable[..., Task]] = {
    "image": ImageStreamTask,
    "omniglot": OmniglotTask,
    "random": RandomTask,
    "sum_sign": SumSignTask,
    "chars": CharStreamTask,
}


@dataclass(frozen=True)
class EnvInfo:
    """What ``rulegym list`` says about one registered env."""

    env_id: str
    task: str
    defaults: dict[str, Any] = field(default_factory=dict)
    needs_data: bool = True
    summary: str = ""


ENVS: dict[str, EnvInfo] = {
    info.env_id: info
    for info in (
        EnvInfo("rulegym/MNIST-v0", "image", {"dataset": "mnist"}, summary="MNIST digits, 28x28, 10 classes"),
        EnvInfo("rulegym/FashionMNIST-v0", "image", {"dataset": "fashion_mnist"}, summary="Fashion-MNIST, 28x28, 10 classes"),
        EnvInfo("rulegym/KMNIST-v0", "image", {"dataset": "kmnist"}, summary="Kuzushiji-MNIST, 28x28, 10 classes"),
        EnvInfo("rulegym/EMNIST-v0", "image", {"dataset": "emnist"}, summary="EMNIST (variant=byclass|bymerge|balanced|letters|digits|mnist)"),
        EnvInfo("rulegym/CIFAR10-v0", "image", {"dataset": "cifar10"}, summary="CIFAR-10, 3x32x32, 10 classes"),
        EnvInfo("rulegym/Digits-v0", "image", {"dataset": "digits"}, needs_data=False, summary="scikit-learn's 8x8 digits (embedded, no data root)"),
        EnvInfo("rulegym/Omniglot-v0", "omniglot", {}, summary="Omniglot N-way K-shot episodes (default 5-way 1-shot)"),
        EnvInfo("rulegym/Random-v0", "random", {}, needs_data=False, summary="20 fixed N(0,1) inputs with random labels: memorisation"),
        EnvInfo("rulegym/SumSign-v0", "sum_sign", {}, needs_data=False, summary="label = sign of the sum of a noisy input"),
        EnvInfo("rulegym/WizardOfOz-v0", "chars", {}, summary="character stream, 27 symbols: predict the next char"),
    )
}

#: envs that run with no data root and no network: the main job's embedded default
EMBEDDED_ENV_IDS = tuple(i for i, info in ENVS.items() if not info.needs_data)


def task_options(env_id: str) -> list[str]:
    """The options a registered env's task takes (its constructor's keyword arguments)."""
    return [p for p in inspect.signature(TASKS[ENVS[env_id].task]).parameters if p != "self"]


def make_task(task: str, **options: Any) -> Task:
    """Build a task by family name, with a clear error for unknown names or options."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}.")
    cls = TASKS[task]
    params = inspect.signature(cls).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        valid = ", ".join(p for p in params if p != "self")
        raise TypeError(f"unknown option(s) {unknown} for task {task!r}; valid options: {valid}.")
    return cls(**options)


def make_env(task: str, render_mode: str | None = None, **options: Any) -> OnlineEnv:
    """gymnasium entry point of the single env."""
    return OnlineEnv(make_task(task, **options), render_mode=render_mode)


def make_vector_env(
    task: str, num_envs: int = 1, max_episode_steps: int | None = None, render_mode: str | None = None, **options: Any
) -> OnlineVectorEnv:
    """gymnasium vector entry point: the native batched env."""
    return OnlineVectorEnv(make_task(task, **options), num_envs, max_episode_steps=max_episode_steps, render_mode=render_mode)


def register_envs() -> None:
    """Register every rulegym env id with gymnasium (idempotent)."""
    for info in ENVS.values():
        if info.env_id in gym.registry:
            continue
        gym.register(
            id=info.env_id,
            entry_point="rulegym.envs.registration:make_env",
            vector_entry_point="rulegym.envs.registration:make_vector_env",
            kwargs={"task": info.task, **info.defaults},
        )

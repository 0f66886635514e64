"""Learner configs: one validated dataclass per learner, read from JSON/TOML with overrides.

A config file names its learner (``learner = "bptt"`` or ``"es"``); every other key is a field
of that learner's dataclass. Validation happens when the dataclass is built, so a typo or a bad
value fails before any work starts, with a message that lists what is valid.

Overrides use dotted paths into the nested config, values parsed as JSON when they parse::

    --set lr=3e-4 --set agent_options.hidden=32 --set tasks.0.options.lifetime_length=100
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

__all__ = [
    "BPTTConfig",
    "ConfigError",
    "ESConfig",
    "LEARNERS",
    "LearnerConfig",
    "TaskSpec",
    "apply_overrides",
    "config_from_dict",
    "load_config",
]

#: training lifetimes are seeded ``seed * TRAIN_SEED_STRIDE + position``; held-out lifetimes
#: from ``EVAL_SEED_BASE + eval_seed * TRAIN_SEED_STRIDE``; the lifetimes of a comparison's seed
#: (rulegym compare/eval) from ``COMPARE_SEED_BASE + seed * TRAIN_SEED_STRIDE``: the ranges never
#: meet, and no two seeds of one kind share a lifetime.
TRAIN_SEED_STRIDE = 2**40
EVAL_SEED_BASE = 2**62
COMPARE_SEED_BASE = 2**61
MAX_SEED = 2**20


class ConfigError(ValueError):
    """A config key or value is invalid; the message names it and what is valid."""


@dataclass
class TaskSpec:
    """One component of a task distribution: an env id, its options and a sampling weight."""

    env_id: str
    options: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0

    def __post_init__(self) -> None:
        import gymnasium as gym

        import rulegym.envs  # noqa: F401  (registers the ids)

        if not isinstance(self.env_id, str) or self.env_id not in gym.registry:
            from rulegym.envs import ENVS

            raise ConfigError(f"unknown env id {self.env_id!r}; registered rulegym envs: {', '.join(ENVS)}.")
        if not isinstance(self.options, Mapping):
            raise ConfigError(f"options of task {self.env_id!r} must be a table/dict, got {type(self.options).__name__}.")
        self.options = dict(self.options)
        if "num_envs" in self.options:
            raise ConfigError(f"task {self.env_id!r}: do not set num_envs in options; the learner sets it (batch_size).")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not (self.weight > 0) or not math.isfinite(self.weight):
            raise ConfigError(f"weight of task {self.env_id!r} must be a positive finite number, got {self.weight!r}.")
        self.weight = float(self.weight)

    @classmethod
    def parse(cls, value: Any, where: str) -> "TaskSpec":
        """A TaskSpec from a TaskSpec, an env id string, or a dict with env_id/options/weight."""
        if isinstance(value, TaskSpec):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, Mapping):
            valid = [f.name for f in fields(cls)]
            unknown = sorted(set(value) - set(valid))
            if unknown:
                raise ConfigError(f"{where}: unknown key(s) {unknown}; a task has keys {valid}.")
            if "env_id" not in value:
                raise ConfigError(f"{where}: a task needs an env_id, e.g. {{env_id = \"rulegym/Random-v0\"}}.")
            return cls(**value)
        raise ConfigError(f"{where}: a task is an env id string or a table with env_id/options/weight, got {value!r}.")

    def label(self) -> str:
        """A short name for logs and TensorBoard tags: the env id without namespace and version."""
        return self.env_id.split("/")[-1].rsplit("-v", 1)[0]


def _default_tasks() -> list[TaskSpec]:
    return [TaskSpec("rulegym/Random-v0", {"x_shape": 8, "n_images": 4, "n_classes": 4, "lifetime_length": 40})]


def _pos_int(name: str, value: Any, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a non-negative integer" if allow_zero else "a positive integer"
        raise ConfigError(f"{name} must be {kind}, got {value!r}.")
    return value


def _pos_float(name: str, value: Any, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        kind = "a non-negative finite number" if allow_zero else "a positive finite number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}.")
    return float(value)


def _choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}.")
    return value


@dataclass
class LearnerConfig:
    """Fields every learner shares (see :class:`BPTTConfig` and :class:`ESConfig`)."""

    learner: ClassVar[str] = ""

    #: registered agent name (rulegym.agents.AGENTS) and its builder options
    agent: str = "meta_rnn"
    agent_options: dict[str, Any] = field(default_factory=dict)
    #: start the meta-parameters from a shipped rule (its name) or a run folder (its latest
    #: checkpoint, else meta_params.pt) of the same agent and options, instead of a fresh
    #: initialisation (see ``learners.base.initial_meta_params``)
    init: str | None = None
    #: the meta-training task distribution; each meta-batch uses one task drawn by weight
    tasks: list[TaskSpec] = field(default_factory=_default_tasks)
    #: held-out evaluation tasks (empty: the training tasks, on held-out lifetimes)
    eval_tasks: list[TaskSpec] = field(default_factory=list)
    #: meta-iterations (updates of the meta-parameters)
    iterations: int = 100
    #: lifetimes per meta-batch (BPTT) or per population member (ES)
    batch_size: int = 16
    seed: int = 0
    #: "cpu", "cuda" or "cuda:N" (under torchrun with cuda each rank takes cuda:LOCAL_RANK)
    device: str = "cpu"
    #: torch intra-op threads per process (None: leave torch's setting)
    num_threads: int | None = None
    #: evaluate on eval_tasks every this many iterations (0: only after the last one)
    eval_every: int = 0
    eval_lifetimes: int = 32
    #: offset of the held-out lifetime seeds (a range disjoint from every training seed)
    eval_seed: int = 0
    #: write a checkpoint every this many iterations (0: only after the last one)
    checkpoint_every: int = 10
    #: write TensorBoard scalars every this many iterations
    log_every: int = 1
    tensorboard: bool = True
    progress: bool = True

    #: fields that may change when a run is resumed: they do not change what is computed, except
    #: ``device`` and ``num_threads``, which run the same computation on other hardware or with
    #: another summation order (a GPU run continued on a CPU, say), so floats differ in their
    #: last bits from a run that kept them; ``init`` is read only when a run starts (a resumed
    #: run's meta-parameters come from its checkpoint), so its source may have moved
    RESUMABLE_CHANGES: ClassVar[frozenset[str]] = frozenset(
        {"iterations", "num_threads", "eval_every", "eval_lifetimes", "checkpoint_every", "log_every", "tensorboard", "progress", "device", "init"}
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        from rulegym.agents import AGENTS

        if self.agent not in AGENTS:
            raise ConfigError(f"unknown agent {self.agent!r}; registered agents: {', '.join(sorted(AGENTS))}.")
        if not isinstance(self.agent_options, Mapping):
            raise ConfigError(f"agent_options must be a table/dict of builder options, got {self.agent_options!r}.")
        self.agent_options = dict(self.agent_options)
        if self.init is not None and (not isinstance(self.init, str) or not self.init):
            raise ConfigError(f"init must be a shipped rule's name or a run folder, got {self.init!r}.")
        if isinstance(self.tasks, (str, Mapping, TaskSpec)):
            self.tasks = [self.tasks]
        if not isinstance(self.tasks, Sequence) or not self.tasks:
            raise ConfigError("tasks must be a non-empty list of tasks (env ids or {env_id, options, weight} tables).")
        self.tasks = [TaskSpec.parse(t, f"tasks[{i}]") for i, t in enumerate(self.tasks)]
        if isinstance(self.eval_tasks, (str, Mapping, TaskSpec)):
            self.eval_tasks = [self.eval_tasks]
        if not isinstance(self.eval_tasks, Sequence):
            raise ConfigError("eval_tasks must be a list of tasks (or empty: the training tasks).")
        self.eval_tasks = [TaskSpec.parse(t, f"eval_tasks[{i}]") for i, t in enumerate(self.eval_tasks)]
        _pos_int("iterations", self.iterations)
        _pos_int("batch_size", self.batch_size)
        _pos_int("seed", self.seed, allow_zero=True)
        if self.seed >= MAX_SEED:
            raise ConfigError(f"seed must be below {MAX_SEED} (seeds index disjoint ranges of lifetime seeds), got {self.seed}.")
        _pos_int("eval_seed", self.eval_seed, allow_zero=True)
        if self.eval_seed >= MAX_SEED:
            raise ConfigError(f"eval_seed must be below {MAX_SEED}, got {self.eval_seed}.")
        if not isinstance(self.device, str) or not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}.")
        if self.num_threads is not None:
            _pos_int("num_threads", self.num_threads)
        _pos_int("eval_every", self.eval_every, allow_zero=True)
        _pos_int("eval_lifetimes", self.eval_lifetimes)
        _pos_int("checkpoint_every", self.checkpoint_every, allow_zero=True)
        _pos_int("log_every", self.log_every)
        for name in ("tensorboard", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (JSON, TOML and ``torch.load(weights_only=True)`` all take it)."""
        out = {"learner": self.learner}
        out.update(json.loads(json.dumps(dataclasses.asdict(self))))
        return out

    def replace(self, **changes: Any) -> "LearnerConfig":
        data = self.to_dict()
        data.update(changes)
        return config_from_dict(data)


@dataclass
class BPTTConfig(LearnerConfig):
    """Meta-training by (truncated) backpropagation through lifetimes, with Adam.

    One iteration runs ``batch_size`` lifetimes of one task from the mixture and takes one
    Adam step on the gradient of the mean masked loss over every step of every lifetime.
    """

    learner: ClassVar[str] = "bptt"

    lr: float = 1e-3
    weight_decay: float = 0.0
    #: clip the meta-gradient to this global L2 norm (None: no clipping)
    grad_clip: float | None = 1.0
    #: steps per backpropagation window (None: the whole lifetime, i.e. full BPTT); the
    #: state is detached between windows and gradients of all windows are summed
    truncation: int | None = None
    #: recompute activations in segments of this many steps during backward (0: off), so
    #: memory holds one segment's activations plus the states at segment boundaries
    activation_checkpoint_steps: int = 0

    def validate(self) -> None:
        super().validate()
        _pos_float("lr", self.lr)
        _pos_float("weight_decay", self.weight_decay, allow_zero=True)
        if self.grad_clip is not None:
            _pos_float("grad_clip", self.grad_clip)
        if self.truncation is not None:
            _pos_int("truncation", self.truncation)
        _pos_int("activation_checkpoint_steps", self.activation_checkpoint_steps, allow_zero=True)


@dataclass
class ESConfig(LearnerConfig):
    """Meta-training by OpenAI-ES (Salimans et al. 2017) with antithetic pairs and Adam.

    One iteration evaluates ``population`` perturbed meta-parameter vectors, theta +- sigma*eps,
    each on ``batch_size`` lifetimes (a pair shares its lifetimes and initial state), and takes
    one Adam step along the ES estimate of the fitness gradient.
    """

    learner: ClassVar[str] = "es"

    population: int = 64
    sigma: float = 0.05
    lr: float = 0.025
    #: centred-rank fitness shaping (ranks mapped to [-0.5, 0.5]) instead of raw fitness
    rank_shaping: bool = True
    #: L2 coefficient added to the ES gradient (OpenAI-ES's l2coeff)
    weight_decay: float = 0.0
    #: "loss": fitness = -mean masked loss; "accuracy": mean online accuracy
    fitness: str = "loss"
    #: members evaluated together in one vmapped batch (None: the whole population/rank slice)
    members_per_chunk: int | None = 32
    #: True: every pair sees the same lifetimes (common random numbers); False: each pair its own
    common_data: bool = False
    #: a member whose outputs went NaN/inf: "worst" (it gets the worst finite fitness) or
    #: "skip" (the whole update is skipped and counted)
    nonfinite_fitness: str = "worst"

    def validate(self) -> None:
        super().validate()
        _pos_int("population", self.population)
        if self.population < 2 or self.population % 2:
            raise ConfigError(f"population must be an even number >= 2 (antithetic pairs), got {self.population}.")
        _pos_float("sigma", self.sigma)
        _pos_float("lr", self.lr)
        _pos_float("weight_decay", self.weight_decay, allow_zero=True)
        if not isinstance(self.rank_shaping, bool) or not isinstance(self.common_data, bool):
            raise ConfigError("rank_shaping and common_data must be true or false.")
        _choice("fitness", self.fitness, ("loss", "accuracy"))
        _choice("nonfinite_fitness", self.nonfinite_fitness, ("worst", "skip"))
        if self.members_per_chunk is not None:
            _pos_int("members_per_chunk", self.members_per_chunk)


LEARNERS: dict[str, type[LearnerConfig]] = {"bptt": BPTTConfig, "es": ESConfig}


def config_fields(cls: type[LearnerConfig]) -> list[str]:
    return [f.name for f in fields(cls)]


def config_from_dict(data: Mapping[str, Any]) -> LearnerConfig:
    """Build the config of ``data["learner"]`` (default "bptt"), rejecting unknown keys."""
    if isinstance(data, LearnerConfig):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config is a table/dict, got {type(data).__name__}.")
    data = dict(data)
    name = data.pop("learner", "bptt")
    if name not in LEARNERS:
        raise ConfigError(f"unknown learner {name!r}; valid learners: {', '.join(LEARNERS)}.")
    cls = LEARNERS[name]
    valid = config_fields(cls)
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown} for learner {name!r}; valid keys: learner, {', '.join(valid)}.")
    try:
        return cls(**data)
    except TypeError as err:  # e.g. a value of the wrong type deep inside a TaskSpec
        raise ConfigError(f"bad config for learner {name!r}: {err}") from err


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.strip().lower()
        if low in ("none", "null"):
            return None
        if low in ("true", "false"):
            return low == "true"
        return text


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a config dict (in place and returned)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad override {item!r}; write key=value, e.g. lr=3e-4 or agent_options.hidden=32.")
        path = key.strip().split(".")
        node: Any = data
        for i, part in enumerate(path[:-1]):
            where = ".".join(path[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {item!r}: {where} is not an index of a list of {len(node)}.")
                node = node[int(part)]
            elif isinstance(node, dict):
                if part not in node:
                    node[part] = {}
                node = node[part]
            else:
                raise ConfigError(f"override {item!r}: {'.'.join(path[:i])} is not a table.")
            if isinstance(node, TaskSpec):
                raise ConfigError(f"override {item!r}: internal error, TaskSpec in a raw config.")
        last = path[-1]
        value = _parse_value(raw)
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"override {item!r}: {key} is not an index of a list of {len(node)}.")
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override {item!r}: {'.'.join(path[:-1])} is not a table.")
    return data


#: the installed package's folder (the repository root of an editable install)
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config dict from a .json or .toml file. A relative path that is not found here is also
    looked for in the installed package, so the shipped configs and presets the README names
    (``train/presets/first100.toml``, ``learners/configs/random_demo.toml``) work from any folder."""
    path = Path(path)
    if not path.is_file():
        shipped = PACKAGE_ROOT / path
        if path.is_absolute() or not shipped.is_file():
            raise ConfigError(f"config file {path} does not exist (`rulegym list` prints the shipped presets' full paths).")
        path = shipped
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"config file {path} is not valid JSON: {err}") from err
    elif path.suffix == ".toml":
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
    else:
        raise ConfigError(f"config file {path} must end in .json or .toml.")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table/object at the top level.")
    return data


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> LearnerConfig:
    """Read a config file (or start from the defaults of ``learner``) and apply overrides."""
    data = read_config_file(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, overrides))

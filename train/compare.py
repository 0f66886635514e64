"""Compare agents on tasks over seeds: the main job of rulegym.

Every (agent, env, seed) cell runs a batch of fresh lifetimes through the one loop and keeps
the per-step records; the summary reports online (prequential) accuracy -- on the k-th
example, cumulative over the first k, and near the end of the lifetime -- as the mean over
seeds with a 95% t-interval.

A run folder holds::

    config.json        the resolved config (and the SHA-256 of each meta-parameters file)
    run.json           seeds, package versions, command, times
    cells/*.npz        per-step results of each finished cell (correct, loss, loss_mask [T, B])
    summary.md/.csv    the table
    curves.png/.svg    online accuracy curves, mean and 95% interval over seeds, one panel per env
    tensorboard/       one run per agent, one tag per env: all agents side by side

Cells are written atomically as they finish; running the same command on the same folder
again (``resume``) skips finished cells.

Lifetime ``i`` of seed ``s`` is seeded ``compare_seed_base(s) + i``
(:mod:`rulegym.learners.tasks`): the seeds' lifetimes are disjoint whatever the number of
lifetimes per cell, so they are independent replicates, and they never meet the lifetimes of
meta-training or of a learner's meta-test.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from rulegym.learners.config import COMPARE_SEED_BASE, MAX_SEED, TRAIN_SEED_STRIDE
from rulegym.learners.tasks import compare_seed_base
from rulegym.train import results as res

#: how a comparison seeds its lifetimes, recorded in each run folder's config.json
LIFETIME_SEEDS = f"lifetime i of seed s: env seed {COMPARE_SEED_BASE} + s * {TRAIN_SEED_STRIDE} + i"


class CompareConfigError(ValueError):
    """A compare config key or value is invalid; the message names it and the valid ones."""


def _is_int(value: Any) -> bool:
    """An integer, not a bool (which Python counts as one: ``seeds = [true]`` is no seed)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_spec(cls, value: Any, what: str, key: str):
    """A spec from itself, its ``key`` string (agent name / env id) or a table of its fields."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        return cls(value)
    valid = [f.name for f in fields(cls)]
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(valid))
        if unknown:
            raise CompareConfigError(f"unknown {what} key(s) {unknown}; an {what} has keys {valid}.")
        return cls(**value)
    raise CompareConfigError(f"an {what} is a {key} or a table with keys {valid}, got {value!r}.")


@dataclass
class AgentSpec:
    """An agent in a comparison: a registered name or a pretrained rule, its options, a label."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    #: meta-parameters saved by `rulegym train` (a state_dict file) to load into the agent; with a
    #: pretrained rule's name they replace the rule's own (its agent options are kept)
    params: str = ""

    def __post_init__(self) -> None:
        from rulegym.agents import AGENTS
        from rulegym.agents.pretrained import PRETRAINED

        if self.name not in AGENTS and self.name not in PRETRAINED:
            raise CompareConfigError(
                f"unknown agent {self.name!r}; registered agents: {', '.join(sorted(AGENTS))}; "
                f"pretrained rules: {', '.join(sorted(PRETRAINED)) or 'none'}."
            )
        if not isinstance(self.options, Mapping):
            raise CompareConfigError(f"options of agent {self.name!r} must be a table, got {self.options!r}.")
        self.options = dict(self.options)
        self.label = self.label or self.name
        if self.params and not Path(self.params).is_file():
            raise CompareConfigError(f"meta-parameters file {self.params!r} of agent {self.label!r} does not exist.")

    @classmethod
    def parse(cls, value: Any) -> "AgentSpec":
        return _parse_spec(cls, value, "agent", "name")

    def fits(self, x_dim: int, n_classes: int) -> bool:
        """Whether the agent runs at these sizes (False only for a shipped rule whose
        meta-parameters fit other sizes, e.g. a meta-trained Meta RNN)."""
        from rulegym.agents.pretrained import PRETRAINED

        return self.name not in PRETRAINED or PRETRAINED[self.name].fits(x_dim, n_classes)

    def build(self, x_dim: int, n_classes: int):
        from rulegym.agents import make_agent
        from rulegym.agents.pretrained import PRETRAINED, load_pretrained

        if self.name in PRETRAINED:  # its options; ``params`` (if given) then replace its meta-parameters
            agent = load_pretrained(self.name, x_dim, n_classes, **self.options)
        else:
            agent = make_agent(self.name, x_dim, n_classes, **self.options)
        if self.params:
            import torch

            state = torch.load(self.params, map_location="cpu", weights_only=True)
            try:
                agent.load_state_dict(state)
            except RuntimeError as err:
                raise CompareConfigError(
                    f"meta-parameters {self.params} do not fit agent {self.name!r} with options {self.options} "
                    f"for x_dim={x_dim}, n_classes={n_classes}: {err}"
                ) from err
        return agent


@dataclass
class EnvSpec:
    """A task in a comparison: a registered env id, its options, a label."""

    env_id: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        from rulegym.envs import ENVS

        if self.env_id not in ENVS:
            raise CompareConfigError(f"unknown env id {self.env_id!r}; registered: {', '.join(ENVS)}.")
        if not isinstance(self.options, Mapping):
            raise CompareConfigError(f"options of env {self.env_id!r} must be a table, got {self.options!r}.")
        self.options = dict(self.options)
        self.label = self.label or self.env_id.split("/")[-1].rsplit("-v", 1)[0]

    @classmethod
    def parse(cls, value: Any) -> "EnvSpec":
        return _parse_spec(cls, value, "env", "env id")


def _default_agents() -> list[Any]:
    from rulegym.agents.pretrained import PRETRAINED

    # learned rules that run at any size first, then the size-bound meta-trained baselines
    shipped = sorted((name for name, info in PRETRAINED.items() if info.in_default_compare), key=lambda n: (PRETRAINED[n].sizes is not None, n))
    return [*shipped, "sgd", "adam"]


def _default_envs() -> list[Any]:
    """The embedded tasks, all with 64 inputs and 10 outputs (the digits' size), so that shipped
    rules bound to that size (meta-trained Meta RNN and Hebbian baselines) run on every one;
    Sum Sign keeps its labels 0 and 1 among 10 outputs."""
    return [
        "rulegym/Digits-v0",
        {"env_id": "rulegym/Random-v0", "options": {"x_shape": 64}},
        {"env_id": "rulegym/SumSign-v0", "options": {"x_shape": 64, "n_classes": 10}},
    ]


@dataclass
class CompareConfig:
    """One comparison: agents x envs x seeds, each cell a batch of ``lifetimes`` lifetimes."""

    agents: list[Any] = field(default_factory=_default_agents)
    envs: list[Any] = field(default_factory=_default_envs)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    #: lifetimes per cell (one batch)
    lifetimes: int = 16
    #: steps per lifetime (the envs' lifetime_length unless an env's options set it)
    steps: int = 500
    #: k of "accuracy on the k-th example" and "cumulative accuracy over the first k"
    ks: list[int] = field(default_factory=lambda: [10, 100])
    #: torch threads (None: leave torch's setting)
    num_threads: int | None = None
    tensorboard: bool = True
    plots: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        self.agents = [AgentSpec.parse(a) for a in (self.agents if isinstance(self.agents, list) else [self.agents])]
        self.envs = [EnvSpec.parse(e) for e in (self.envs if isinstance(self.envs, list) else [self.envs])]
        if not self.agents or not self.envs:
            raise CompareConfigError("a comparison needs at least one agent and one env.")
        # each (agent, env) pair writes its cells to files of its own, named after the labels
        pairs = [(a.label, e.label) for a in self.agents for e in self.envs]
        first: dict[str, int] = {}
        for i, (agent, env) in enumerate(pairs):
            j = first.setdefault(res.cell_stem(agent, env), i)
            if j != i:
                raise CompareConfigError(
                    f"agent and env labels must be unique, also as file names: agent {pairs[j][0]!r} on env {pairs[j][1]!r} and "
                    f"agent {agent!r} on env {env!r} would write the same cells/{res.cell_stem(agent, env)}__s<seed>.npz (a file "
                    "name keeps letters, digits and _.+-, anything else becomes _); give them labels that differ there."
                )
        if not isinstance(self.seeds, list) or not self.seeds or not all(_is_int(s) and s >= 0 for s in self.seeds):
            raise CompareConfigError(f"seeds must be a non-empty list of non-negative integers, got {self.seeds!r}.")
        if len(set(self.seeds)) != len(self.seeds):
            raise CompareConfigError(f"seeds repeat: {self.seeds}.")
        if max(self.seeds) >= MAX_SEED:
            raise CompareConfigError(f"seeds must be below {MAX_SEED} (each indexes its own range of lifetime seeds), got {max(self.seeds)}.")
        for name in ("lifetimes", "steps"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise CompareConfigError(f"{name} must be a positive integer, got {value!r}.")
        if self.lifetimes >= TRAIN_SEED_STRIDE:
            raise CompareConfigError(f"lifetimes must be below {TRAIN_SEED_STRIDE} (the lifetime seeds of one seed), got {self.lifetimes}.")
        if not isinstance(self.ks, list) or not all(_is_int(k) and 1 <= k for k in self.ks):
            raise CompareConfigError(f"ks must be a list of positive integers, got {self.ks!r}.")
        if self.num_threads is not None and (not _is_int(self.num_threads) or self.num_threads < 1):
            raise CompareConfigError(f"num_threads must be a positive integer or null, got {self.num_threads!r}.")
        for name in ("tensorboard", "plots"):
            if not isinstance(getattr(self, name), bool):
                raise CompareConfigError(f"{name} must be true or false, got {getattr(self, name)!r}.")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def folder_dict(self) -> dict[str, Any]:
        """What a run folder's config.json holds: the config, how its lifetimes are seeded and the
        SHA-256 of each agent's meta-parameters file, its ``params`` or its shipped rule's (a
        folder whose cells were seeded otherwise, or run with other meta-parameters under the
        same path or rule name, is not resumed into). Agents without such a file (baselines) have
        no hash entry."""
        hashes = self.params_sha256()
        return {**self.to_dict(), "lifetime_seeds": LIFETIME_SEEDS, **({"params_sha256": hashes} if hashes else {})}

    def params_sha256(self) -> dict[str, str]:
        """Agent label -> SHA-256 of its meta-parameters: its ``params`` file, or the shipped
        rule's file (its manifest's hash), so a rule shipped again under its name is not resumed into."""
        from rulegym.agents.pretrained import PRETRAINED, file_sha256

        out = {}
        for a in self.agents:
            if a.params:
                out[a.label] = file_sha256(Path(a.params))
            elif a.name in PRETRAINED and PRETRAINED[a.name].sha256:
                out[a.label] = PRETRAINED[a.name].sha256
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CompareConfig":
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise CompareConfigError(f"unknown compare key(s) {unknown}; valid keys: {', '.join(valid)}.")
        try:
            return cls(**dict(data))
        except TypeError as err:
            raise CompareConfigError(f"bad compare config: {err}") from err

    def env_options(self, env: EnvSpec) -> dict[str, Any]:
        """The env's options, with ``steps`` as its lifetime length where the task has one
        (an Omniglot lifetime is its episodes; ``steps`` then only truncates it)."""
        from rulegym.envs.registration import task_options

        if "lifetime_length" not in task_options(env.env_id):
            return dict(env.options)
        return {"lifetime_length": self.steps, **env.options}


def load_compare_config(path: str | Path | None, overrides: Sequence[str] = (), quick: bool = False) -> CompareConfig:
    """A compare config from a TOML/JSON file (or the defaults) plus ``key=value`` overrides."""
    from rulegym.learners.config import ConfigError, apply_overrides, read_config_file

    try:
        data = read_config_file(path) if path is not None else {}
        if quick:  # over the file's values (a preset, quickly); --set still refines them
            data = {**data, "seeds": [0, 1], "lifetimes": 8, "steps": 200}
        data = apply_overrides(data, overrides)
    except ConfigError as err:
        raise CompareConfigError(str(err)) from err
    data.pop("kind", None)
    data.pop("lifetime_seeds", None)  # a run folder's config.json
    data.pop("params_sha256", None)
    return CompareConfig.from_dict(data)


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("rulegym", "torch", "numpy", "gymnasium", "stable-baselines3", "tensorboard", "matplotlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _progress(done: int, total: int, start: float, text: str) -> None:
    elapsed = time.perf_counter() - start
    eta = elapsed / max(done, 1) * (total - done)
    width = 24
    filled = int(width * done / total)
    bar = "#" * filled + "-" * (width - filled)
    print(f"\r[{bar}] {done}/{total} {text[:48]:<48} eta {eta:5.0f}s", end="", file=sys.stderr, flush=True)


def run_compare(cfg: CompareConfig, out_dir: Path, progress: bool = True) -> list[dict[str, Any]]:
    """Run every unfinished cell, write the run folder, and return the summary rows."""
    import gymnasium as gym
    import torch

    from rulegym.agents.pretrained import PRETRAINED
    from rulegym.train.loop import env_dims, evaluate

    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    # each env's (x_dim, n_classes, steps), read from a 1-lifetime env (no data drawn)
    dims: dict[str, tuple[int, int, int]] = {}
    for env_spec in cfg.envs:
        probe = gym.make_vec(env_spec.env_id, num_envs=1, **cfg.env_options(env_spec))
        # an env whose options set its lifetime runs all of it; max_episode_steps cuts it
        steps = probe.unwrapped.task.lifetime_length if "lifetime_length" in env_spec.options else min(cfg.steps, probe.unwrapped.task.lifetime_length)
        if probe.unwrapped.max_episode_steps is not None:
            steps = min(steps, probe.unwrapped.max_episode_steps)
        dims[env_spec.label] = (*env_dims(probe), steps)
        probe.close()
    skipped = [(a.label, e.label) for a in cfg.agents for e in cfg.envs if not a.fits(*dims[e.label][:2])]
    for agent_spec in cfg.agents:
        if all((agent_spec.label, e.label) in skipped for e in cfg.envs):
            raise CompareConfigError(
                f"agent {agent_spec.label!r} fits none of the envs: its meta-parameters are for "
                f"x_dim, n_classes = {PRETRAINED[agent_spec.name].sizes}, the envs give "
                f"{sorted({d[:2] for d in dims.values()})}; drop it or give the envs that size (e.g. resize=8)."
            )
    for agent_label, env_label in skipped:
        print(f"rulegym compare: skipping {agent_label} on {env_label}: its meta-parameters fit other input/output sizes "
              f"than the env's {dims[env_label][:2]}.", file=sys.stderr)
    # every agent is built once before anything is written: a bad option or params file is an
    # error that leaves no folder behind, so the corrected command can use the same --out
    for agent_spec in cfg.agents:
        for sizes in {dims[e.label][:2] for e in cfg.envs if (agent_spec.label, e.label) not in skipped}:
            agent_spec.build(*sizes)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / "config.json"
    new = cfg.folder_dict()
    if config_path.exists():
        old = json.loads(config_path.read_text())
        if old != new:
            raise CompareConfigError(
                f"{out_dir} holds a comparison with a different config; use a new --out folder, "
                f"or the same config to resume it (differences in: "
                f"{sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))})."
            )
    res.write_json(config_path, new)
    info = {"seeds": cfg.seeds, "versions": package_versions(), "command": sys.argv, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    cells = [(a, e, s) for e in cfg.envs for a in cfg.agents for s in cfg.seeds if (a.label, e.label) not in skipped]
    info["skipped"] = [list(pair) for pair in skipped]
    todo = [c for c in cells if not res.cell_path(out_dir, c[0].label, c[1].label, c[2]).exists()]
    start = time.perf_counter()
    for i, (agent_spec, env_spec, seed) in enumerate(todo):
        opts = cfg.env_options(env_spec)
        x_dim, n_classes, steps = dims[env_spec.label]
        torch.manual_seed(seed)  # meta-parameter init of agents built untrained
        agent = agent_spec.build(x_dim, n_classes)
        if progress:
            _progress(i, len(todo), start, f"{agent_spec.label} on {env_spec.label} seed {seed}")
        result = evaluate(agent, env_spec.env_id, num_envs=cfg.lifetimes, seed=compare_seed_base(seed), steps=steps, env_options=opts)
        res.save_cell(
            out_dir, agent_spec.label, env_spec.label, seed,
            correct=result.correct.numpy(), loss_mask=result.loss_mask.numpy(), loss=result.loss.detach().float().numpy(),
        )
    if progress and todo:
        _progress(len(todo), len(todo), start, "done")
        print(file=sys.stderr)
    info["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    info["cells_run_now"] = len(todo)
    info["cells_total"] = len(cells)
    res.write_json(out_dir / "run.json", info)
    runs = res.load_runs([out_dir])
    agent_order = {a.label: i for i, a in enumerate(cfg.agents)}
    env_order = {e.label: i for i, e in enumerate(cfg.envs)}
    runs.sort(key=lambda c: (env_order.get(c.env, 1 << 30), agent_order.get(c.agent, 1 << 30), c.seed))
    rows = res.summarize(runs, cfg.ks)
    res.write_tables(rows, out_dir)
    if cfg.plots:
        res.plot_curves(runs, out_dir / "curves")
    if cfg.tensorboard:
        res.write_tensorboard(runs, out_dir / "tensorboard")
    return rows

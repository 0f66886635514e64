"""Pretrained rules shipped inside the package, loadable by name.

Each rule is a pair of files in ``agents/rules/``: ``<name>.pt`` (the meta-parameters, an
agent state_dict, loaded with ``weights_only=True``) and ``<name>.json`` (the agent name and
options it was built with, the command and config that trained it, and its measured metrics).
The manifest's top-level ``sha256`` is the sha256 of the shipped ``<name>.pt``, written by
:func:`ship_rule`; :func:`load_pretrained` checks it and refuses a parameters file that does not
match (a corrupted or half-copied install, or a ``.pt`` replaced without re-shipping). A manifest
without it (a rule shipped before the key existed) still loads, unchecked. ``training.sha256``,
when present, is something else: the hash of the training run's ``meta_params.pt`` (a checkpoint
file, which need not be byte-identical to the shipped file even when its tensors are equal).
A rule's meta-parameters do not depend on the input or output size for learned-rule agents
such as VSML, so one rule runs on any task. Baselines whose meta-parameters do (Meta RNN,
Hebbian fast weights) record the sizes they fit in the manifest (``x_dim``, ``n_classes``) and
run only there.

``python -m rulegym.agents.pretrained RUN_DIR NAME --description TEXT`` ships the
meta-parameters of a ``rulegym train`` run folder as the rule NAME.
"""

from __future__ import annotations

import hashlib
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
    #: (x_dim, n_classes) the meta-parameters fit, or None when they fit any size
    sizes: tuple[int, int] | None = None

    @property
    def path(self) -> Path:
        return RULES_DIR / f"{self.name}.pt"

    def fits(self, x_dim: int, n_classes: int) -> bool:
        return self.sizes is None or self.sizes == (x_dim, n_classes)

    @property
    def sha256(self) -> str | None:
        """The sha256 the manifest records for the shipped ``.pt`` (None in a manifest from
        before it was recorded: such a rule loads unchecked)."""
        return self.meta.get("sha256")

    def checked_path(self) -> Path:
        """The parameters file, after checking it has the sha256 the manifest records (if any)."""
        if self.sha256 is not None:
            actual = file_sha256(self.path)
            if actual != self.sha256:
                raise ValueError(
                    f"pretrained rule {self.name!r}: its parameters file {self.path} has sha256 {actual}, but its manifest "
                    f"{self.path.with_suffix('.json')} records {self.sha256}; the file is corrupted or was replaced "
                    "without re-shipping. Reinstall rulegym, or re-ship the rule with ship_rule / "
                    "`python -m rulegym.agents.pretrained RUN_DIR NAME` (which records the hash of the file it writes)."
                )
        return self.path


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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
            sizes=(int(meta["x_dim"]), int(meta["n_classes"])) if "x_dim" in meta else None,
        )
    return found


PRETRAINED: dict[str, PretrainedInfo] = _discover()


def load_pretrained(name: str, x_dim: int, n_classes: int, **options: Any):
    """Build the rule's agent for ``x_dim`` inputs and ``n_classes`` classes and load its
    meta-parameters. ``options`` override the agent options it was trained with (e.g. a
    different number of ticks), as long as the meta-parameter shapes still match. The
    parameters file must have the sha256 the manifest records (when it records one)."""
    from rulegym.agents import make_agent

    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained rule {name!r}; shipped rules: {', '.join(sorted(PRETRAINED)) or 'none'}.")
    info = PRETRAINED[name]
    if not info.path.is_file():
        raise FileNotFoundError(f"pretrained rule {name!r} is missing its parameters file {info.path}; reinstall rulegym.")
    if not info.fits(x_dim, n_classes):
        raise ValueError(
            f"pretrained rule {name!r} is a {info.agent} whose meta-parameters fit x_dim={info.sizes[0]}, "
            f"n_classes={info.sizes[1]} only, not x_dim={x_dim}, n_classes={n_classes}; give the task that many "
            "inputs and classes (e.g. resize=8 for 8x8 images), or use a size-free rule."
        )
    agent = make_agent(info.agent, x_dim, n_classes, **{**info.options, **options})
    state = torch.load(info.checked_path(), map_location="cpu", weights_only=True)
    own = agent.state_dict()
    changed = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and v.shape != own[k].shape}
    if changed:
        overrides = f" with the options {options}" if options else ""
        raise ValueError(
            f"pretrained rule {name!r} does not fit a {info.agent} built{overrides} for x_dim={x_dim}, "
            f"n_classes={n_classes}: meta-parameter shapes differ (name: (rule's shape, agent's shape)) {changed}; "
            "override only options that keep the meta-parameter shapes (e.g. ticks), not sizes such as "
            "state_size or hidden widths."
        )
    missing, unexpected = agent.load_state_dict(state, strict=False)
    if missing or unexpected:
        hint = (
            f"the options {options} change which meta-parameters it has; drop them"
            if options
            else "it only runs where its meta-parameters are size-independent"
        )
        raise ValueError(
            f"pretrained rule {name!r} does not fit a {info.agent} built for x_dim={x_dim}, n_classes={n_classes} "
            f"(missing {missing}, unexpected {unexpected}); {hint}."
        )
    return agent


def size_free(agent: str, **options: Any) -> bool:
    """Whether an agent's meta-parameters have the same shapes at every input and output size."""
    from rulegym.agents import make_agent

    shapes = [
        {k: tuple(v.shape) for k, v in make_agent(agent, x_dim, n_classes, **options).state_dict().items()}
        for x_dim, n_classes in ((3, 2), (5, 4))
    ]
    return shapes[0] == shapes[1]


def ship_rule(name: str, state_dict: dict[str, torch.Tensor], manifest: dict[str, Any], rules_dir: Path | None = None) -> Path:
    """Write a rule into the rules folder: ``NAME.pt`` (the state_dict) and ``NAME.json`` (the
    manifest: ``agent``, ``agent_options``, ``description``, ..., plus ``sha256``, the hash of
    the ``NAME.pt`` written here, which :func:`load_pretrained` checks), each atomically, and
    both written in full before either replaces the shipped one. The given manifest is not
    modified; a ``sha256`` in it is replaced."""
    if not name.isidentifier():
        raise ValueError(f"a rule name must be an identifier (letters, digits, underscores), got {name!r}.")
    missing = {"agent", "description"} - set(manifest)
    if missing:
        raise ValueError(f"a rule manifest needs {sorted(missing)}.")
    rules_dir = RULES_DIR if rules_dir is None else Path(rules_dir)
    rules_dir.mkdir(parents=True, exist_ok=True)
    # both files are written in full first and then moved into place one right after the other,
    # so an interruption while writing leaves the rule shipped before intact
    tmp_pt, tmp_json = rules_dir / f"{name}.pt.tmp", rules_dir / f"{name}.json.tmp"
    try:
        torch.save(state_dict, tmp_pt)
        manifest = {**manifest, "sha256": file_sha256(tmp_pt)}  # the bytes that ship, not the run's file
        tmp_json.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        tmp_pt.replace(rules_dir / f"{name}.pt")
        tmp_json.replace(rules_dir / f"{name}.json")
    finally:
        for tmp in (tmp_pt, tmp_json):
            tmp.unlink(missing_ok=True)
    return rules_dir / f"{name}.pt"


def manifest_from_run(run_dir: str | Path, description: str, in_default_compare: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The meta-parameters and a rule manifest from a ``rulegym train`` run folder
    (``config.json``, ``meta_params.pt``, ``summary.json``). A size-bound agent's manifest
    records the x_dim and n_classes its parameters were trained for. ``training.sha256`` is the
    hash of the run's ``meta_params.pt``; :func:`ship_rule` adds the top-level ``sha256`` of the
    file it ships."""
    from rulegym.agents import make_agent
    from rulegym.learners.config import config_from_dict
    from rulegym.learners.tasks import TaskMixture

    run_dir = Path(run_dir)
    for f in ("config.json", "meta_params.pt"):
        if not (run_dir / f).is_file():
            raise FileNotFoundError(f"{run_dir} has no {f}; ship from a finished `rulegym train` run folder.")
    config = config_from_dict(json.loads((run_dir / "config.json").read_text()))
    state = torch.load(run_dir / "meta_params.pt", map_location="cpu", weights_only=True)
    mixture = TaskMixture(config.tasks, config.seed)
    x_dim, n_classes = mixture.x_dim, mixture.n_classes
    mixture.close()
    make_agent(config.agent, x_dim, n_classes, **config.agent_options).load_state_dict(state)  # it must load
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    manifest: dict[str, Any] = {
        "agent": config.agent,
        "agent_options": dict(config.agent_options),
        "description": description,
        "in_default_compare": bool(in_default_compare),
        "training": {
            "config": config.to_dict(),
            # what meta_params.pt holds (a run resumed with more iterations and stopped early
            # has a larger config.iterations than its parameters went through)
            "iterations": summary.get("iterations", config.iterations),
            "meta_params": sum(v.numel() for v in state.values()),
            "sha256": file_sha256(run_dir / "meta_params.pt"),  # the run's file (ship_rule hashes the shipped one)
            "summary": summary,
        },
    }
    if not size_free(config.agent, **config.agent_options):
        manifest["x_dim"], manifest["n_classes"] = x_dim, n_classes
    return state, manifest


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Ship the meta-parameters of a `rulegym train` run folder as a pretrained rule.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("name", help="the rule's name (an identifier)")
    parser.add_argument("--description", required=True, help="one line: what the rule is and how it was trained")
    parser.add_argument("--default-compare", action="store_true", help="include it in `rulegym compare` with no arguments")
    parser.add_argument("--command", default="", help="the command that trained it, recorded in the manifest")
    args = parser.parse_args(argv)
    state, manifest = manifest_from_run(args.run_dir, args.description, args.default_compare)
    if args.command:
        manifest["training"]["command"] = args.command
    print(ship_rule(args.name, state, manifest))


if __name__ == "__main__":
    main()

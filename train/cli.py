"""The ``rulegym`` command line: one entry point, subcommands a user guesses.

    rulegym list            registered envs, agents and pretrained rules
    rulegym train           meta-train a rule from a config (BPTT or ES, torchrun-ready)
    rulegym eval            meta-test saved or shipped rules and baselines
    rulegym compare         agents x tasks x seeds, online accuracy table (embedded default)
    rulegym report          tables and figures from run folders
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence


def cmd_list(args: argparse.Namespace) -> int:
    import rulegym.envs as envs

    print("Environments (gym.make(id) / gym.make_vec(id, num_envs=N)):")
    width = max(len(i) for i in envs.ENVS)
    for env_id, info in envs.ENVS.items():
        where = "embedded" if not info.needs_data else "data root"
        print(f"  {env_id:<{width}}  [{where:9}]  {info.summary}")
    try:
        import rulegym.agents as agents
    except ImportError as err:  # pragma: no cover - only when an optional part is broken
        print(f"\nAgents: unavailable ({err})")
        return 0
    print("\nAgents (rulegym.agents.make_agent(name, x_dim, n_classes)):")
    for name in sorted(agents.AGENTS):
        doc = (agents.AGENTS[name].__doc__ or "").strip().splitlines()
        print(f"  {name:<{width}}  {doc[0] if doc else ''}")
    from rulegym.agents.pretrained import PRETRAINED

    print("\nPretrained rules (rulegym compare --agents NAME):")
    for name, info in sorted(PRETRAINED.items()):
        sizes = f" [x_dim={info.sizes[0]}, n_classes={info.sizes[1]} only]" if info.sizes else ""
        print(f"  {name:<{width}}  {info.agent}{sizes}: {info.description}")
    if not PRETRAINED:
        print("  (none shipped)")
    presets = sorted(Path(__file__).with_name("presets").glob("*.toml"))
    print("\nPresets (rulegym compare --config PATH):")
    for path in presets:
        first = path.read_text().splitlines()[0].lstrip("# ").strip() if path.stat().st_size else ""
        print(f"  {str(path):<{width}}  {first}")
    if not presets:
        print("  (none)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from rulegym.envs.data.errors import DataError
    from rulegym.train.compare import CompareConfigError, load_compare_config, run_compare
    from rulegym.train.results import markdown_table

    # the flags first, then --set, so that --set can refine what a flag gave: agents and envs as
    # tables, so that e.g. `--agents sgd --set agents.0.options.lr=0.1` sets that agent's option
    overrides = []
    if args.agents is not None:
        overrides.append(f"agents={json.dumps([{'name': name} for name in args.agents])}")
    if args.envs is not None:
        overrides.append(f"envs={json.dumps([{'env_id': env_id} for env_id in args.envs])}")
    for name in ("seeds", "lifetimes", "steps"):
        if getattr(args, name) is not None:
            overrides.append(f"{name}={json.dumps(getattr(args, name))}")
    overrides += args.set
    try:
        cfg = load_compare_config(args.config, overrides, quick=args.quick)
        out = Path(args.out) if args.out else Path("runs") / time.strftime("compare-%Y%m%d-%H%M%S")
        rows = run_compare(cfg, out, progress=not args.no_progress)
    except (CompareConfigError, DataError, ValueError, TypeError) as err:  # (a missing data file: its message names the fix)
        print(f"rulegym compare: {err}", file=sys.stderr)
        return 2
    print(markdown_table(rows))
    print(f"run folder: {out}  (plot: {out / 'curves.png'}; TensorBoard: tensorboard --logdir {out / 'tensorboard'})")
    return 0


def cmd_train(args: argparse.Namespace, rest: Sequence[str]) -> int:
    """Meta-train from a config: the learners' own entry point (also runs under torchrun)."""
    from rulegym.learners.__main__ import main as learners_main

    return learners_main(list(rest))


def cmd_eval(args: argparse.Namespace) -> int:
    """Meta-test saved or shipped rules and baselines: a comparison with one agent per
    ``--params`` file plus any named agents, on the given envs."""
    agents: list = [{"name": name} for name in args.agents or []]
    for item in args.params:
        name, sep, path = item.partition("=")
        if not sep:
            print(f"rulegym eval: --params takes AGENT=PATH (e.g. vsml=runs/vsml/meta_params.pt), got {item!r}", file=sys.stderr)
            return 2
        spec = {"name": name, "params": path, "label": f"{name}:{Path(path).parent.name or path}"}
        run_config = Path(path).parent / "config.json"
        if run_config.is_file():  # a meta-training run folder: its agent's options come with it
            try:
                trained = json.loads(run_config.read_text())
            except (OSError, ValueError) as err:
                print(f"rulegym eval: {run_config} cannot be read ({err}).", file=sys.stderr)
                return 2
            if isinstance(trained, dict) and "agent" in trained:
                if trained["agent"] != name:
                    print(f"rulegym eval: {path} holds a {trained['agent']!r} (its run's config.json), not a {name!r}; "
                          f"use --params {trained['agent']}={path}", file=sys.stderr)
                    return 2
                spec["options"] = dict(trained.get("agent_options", {}))
        agents.append(spec)
    if not agents:
        print("rulegym eval: give --agents and/or --params", file=sys.stderr)
        return 2
    args.set = [f"agents={json.dumps(agents)}", *args.set]
    args.agents = None
    return cmd_compare(args)


def cmd_report(args: argparse.Namespace) -> int:
    from rulegym.train.results import markdown_table, report

    out = Path(args.out)
    try:
        rows = report([Path(r) for r in args.runs], out, ks=args.ks, heatmap_metric=args.metric)
    except (FileNotFoundError, ValueError) as err:
        print(f"rulegym report: {err}", file=sys.stderr)
        return 2
    print(markdown_table(rows))
    print(f"report folder: {out} (summary.md, summary.csv, curves.png/svg, heatmap.png/svg)")
    return 0


def _run_options(p: argparse.ArgumentParser) -> None:
    """The options `compare` and `eval` share (both run the comparison engine)."""
    p.add_argument("--config", help="a TOML or JSON compare config (see train/presets/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (dotted keys)")
    p.add_argument("--agents", nargs="+", help="registered agent names or pretrained rules (default: shipped rules, sgd, adam)")
    p.add_argument("--envs", nargs="+", help="env ids (default: the embedded ones, see `rulegym list`)")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds (default: 0 1 2)")
    p.add_argument("--lifetimes", type=int, help="lifetimes per cell (default 16)")
    p.add_argument("--steps", type=int, help="steps per lifetime (default 500)")
    p.add_argument("--out", help="run folder (default: runs/compare-<time>); an existing one is resumed")
    p.add_argument("--quick", action="store_true", help="2 seeds, 8 lifetimes, 200 steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rulegym",
        description="Online learning tasks as gymnasium envs; learned learning rules and baselines; comparisons.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_list = sub.add_parser("list", help="list registered envs and agents", description="List registered envs and agents.")
    p_list.set_defaults(func=cmd_list)

    p_cmp = sub.add_parser(
        "compare",
        help="compare agents on tasks over seeds (default: the embedded tasks, no data needed)",
        description="Run agents x envs x seeds, each cell a batch of fresh lifetimes; write a run folder "
        "with the summary table (online accuracy, mean and 95%% interval over seeds) and TensorBoard curves.",
    )
    _run_options(p_cmp)
    p_cmp.set_defaults(func=cmd_compare)

    p_train = sub.add_parser(
        "train",
        help="meta-train a rule from a config (BPTT or ES; torchrun for several processes)",
        description="Meta-train an agent: rulegym train --config learners/configs/X.toml --run-dir runs/X "
        "[--set key=value] [--resume]. Same options as `python -m rulegym.learners --help`.",
        add_help=False,
    )
    p_train.set_defaults(func=cmd_train, passthrough=True)

    p_eval = sub.add_parser(
        "eval",
        help="meta-test saved or shipped rules and baselines on tasks",
        description="Evaluate agents on tasks with fresh lifetimes per seed (the compare engine): named agents, "
        "pretrained rules, and meta-parameters saved by `rulegym train` (--params AGENT=PATH).",
    )
    p_eval.add_argument("--params", action="append", default=[], metavar="AGENT=PATH", help="saved meta-parameters (a state_dict .pt)")
    _run_options(p_eval)
    p_eval.set_defaults(func=cmd_eval)

    p_rep = sub.add_parser(
        "report",
        help="tables and figures from one or more run folders",
        description="Merge the cells of run folders and write summary tables, learning curves and a heat map.",
    )
    p_rep.add_argument("runs", nargs="+", help="run folders written by `rulegym compare`")
    p_rep.add_argument("--out", required=True, help="report folder")
    p_rep.add_argument("--ks", nargs="+", type=int, default=[10, 100], help="k of accuracy-at-k and first-k metrics")
    p_rep.add_argument("--metric", help="metric of the heat map (default: acc_first_<largest k>)")
    p_rep.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # everything after `train` belongs to the learners' parser
        return int(cmd_train(argparse.Namespace(), argv[1:]) or 0)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

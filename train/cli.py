"""The ``rulegym`` command line: one entry point, subcommands a user guesses.

    rulegym list            the registered envs (and agents)
    rulegym compare         agents x tasks x seeds, online accuracy table (embedded default)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence


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
    return 0


def parse_assignments(items: Sequence[str], what: str) -> dict[str, dict[str, Any]]:
    """``NAME.option=value`` pairs -> {NAME: {option: value}}; values are parsed as JSON if they can be."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        owner, dot, option = name.rpartition(".")
        if not sep or not dot or not owner or not option:
            raise SystemExit(f"rulegym: bad {what} {item!r}; write NAME.option=value, e.g. sgd.lr=0.05.")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(owner, {})[option] = parsed
    return out


def cmd_compare(args: argparse.Namespace) -> int:
    from rulegym.train.compare import CompareConfig, run_compare

    cfg = CompareConfig()
    if args.quick:
        cfg.seeds, cfg.lifetimes, cfg.steps = [0, 1], 8, 200
    for name in ("agents", "envs", "seeds", "lifetimes", "steps"):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    cfg.agent_options = parse_assignments(args.agent_opt, "--agent-opt")
    cfg.env_options = parse_assignments(args.env_opt, "--env-opt")
    out = Path(args.out) if args.out else Path("runs") / time.strftime("compare-%Y%m%d-%H%M%S")
    try:
        rows = run_compare(cfg, out, progress=not args.no_progress)
    except (ValueError, TypeError) as err:
        print(f"rulegym compare: {err}", file=sys.stderr)
        return 2
    from rulegym.train.compare import markdown_table

    print()
    print(markdown_table(rows))
    print(f"run folder: {out}  (TensorBoard: tensorboard --logdir {out / 'tensorboard'})")
    return 0


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
    p_cmp.add_argument("--agents", nargs="+", help="registered agent names (default: sgd adam)")
    p_cmp.add_argument("--envs", nargs="+", help="env ids (default: the embedded ones, see `rulegym list`)")
    p_cmp.add_argument("--seeds", nargs="+", type=int, help="seeds (default: 0 1 2)")
    p_cmp.add_argument("--lifetimes", type=int, help="lifetimes per cell (default 16)")
    p_cmp.add_argument("--steps", type=int, help="steps per lifetime (default 500)")
    p_cmp.add_argument("--agent-opt", action="append", default=[], metavar="AGENT.option=value", help="agent option")
    p_cmp.add_argument("--env-opt", action="append", default=[], metavar="ENV_ID.option=value", help="env option")
    p_cmp.add_argument("--out", help="run folder (default: runs/compare-<time>)")
    p_cmp.add_argument("--quick", action="store_true", help="2 seeds, 8 lifetimes, 200 steps")
    p_cmp.add_argument("--no-progress", action="store_true", help="no per-cell progress lines")
    p_cmp.set_defaults(func=cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

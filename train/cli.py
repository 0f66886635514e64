"""The ``rulegym`` command line: one entry point, subcommands a user guesses.

    rulegym list            the registered envs (and agents)
    rulegym compare         agents x tasks x seeds, online accuracy table (embedded default)
"""

from __future__ import annotations

import argparse
import sys
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
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rulegym",
        description="Online learning tasks as gymnasium envs; learned learning rules and baselines; comparisons.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_list = sub.add_parser("list", help="list registered envs and agents", description="List registered envs and agents.")
    p_list.set_defaults(func=cmd_list)
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

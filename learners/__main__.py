"""``python -m rulegym.learners``: meta-train from a config file, on one process or under torchrun.

    python -m rulegym.learners --config run.toml --run-dir runs/rnn [--set lr=3e-4 ...] [--resume]
    torchrun --nproc_per_node=2 -m rulegym.learners --config run.toml --run-dir runs/rnn2

``--resume`` continues the checkpoint in ``--run-dir``; without ``--config`` it reuses the
folder's ``config.json`` (``--set`` may still change e.g. iterations).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from rulegym.learners.config import LEARNERS, ConfigError, apply_overrides, config_fields, config_from_dict, read_config_file


def build_parser() -> argparse.ArgumentParser:
    keys = "; ".join(f"{name}: {', '.join(config_fields(cls))}" for name, cls in LEARNERS.items())
    parser = argparse.ArgumentParser(
        prog="python -m rulegym.learners",
        description="Meta-train an agent (BPTT or OpenAI-ES) on a task distribution; write a run folder with "
        "config, checkpoints, TensorBoard events and the final meta-parameters. Under "
        "`torchrun --nproc_per_node=N -m rulegym.learners ...` the work is split over N processes.",
        epilog=f"config keys -- learner (bptt|es); {keys}",
    )
    parser.add_argument("--config", help="config file (.json or .toml); default: the learner's defaults")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config key (dotted paths, JSON values), e.g. --set lr=3e-4 --set agent_options.hidden=32")
    parser.add_argument("--run-dir", required=True, help="run folder (created if missing)")
    parser.add_argument("--resume", action="store_true", help="continue the checkpoint in --run-dir")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rulegym.envs.data.errors import DataError
    from rulegym.learners.checkpoint import CheckpointError
    from rulegym.learners.run import CONFIG_NAME, meta_train

    try:
        if args.config:
            data = read_config_file(args.config)
        elif args.resume and (Path(args.run_dir) / CONFIG_NAME).exists():
            data = json.loads((Path(args.run_dir) / CONFIG_NAME).read_text())
        else:
            data = {}
        overrides = list(args.overrides) + (["progress=false"] if args.no_progress else [])
        config = config_from_dict(apply_overrides(data, overrides))
        _params, logs = meta_train(config, args.run_dir, resume=args.resume)
    except (ConfigError, CheckpointError, DataError, FileExistsError, TypeError, ValueError) as err:
        if int(os.environ.get("RANK", "0")) == 0:  # every rank raises the same error; say it once
            kind = "" if isinstance(err, ConfigError) else f"{type(err).__name__}: "
            print(f"rulegym.learners: {kind}{err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        last = logs[-1] if logs else {}
        shown = {k: v for k, v in last.items() if k in ("step", "meta_loss", "meta_train_accuracy") or k.startswith("meta_test/")}
        print(f"rulegym.learners: done; run folder {args.run_dir}; last iteration: {json.dumps(shown)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

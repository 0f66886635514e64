"""VSML Figure 8 at CPU scale: the meta-train x meta-test grid.

Each learned-rule agent (VSML, Meta RNN, Hebbian fast weights, FWM) is meta-trained by BPTT on
each training set -- every single dataset, "all" of them, and each "all but one" (leave-one-out)
-- and every resulting rule is meta-tested on every dataset; online SGD and Adam, which need no
meta-training, are tested once as the reference row. The paper's finding to check: VSML
generalises to datasets it was not meta-trained on, the Meta RNN and the fast-weight baselines
mostly do not.

Datasets (all with 64 inputs and 10 outputs, so one rule of any agent runs on all of them):
MNIST, Fashion-MNIST, KMNIST, EMNIST (digits) resized to 8x8, Random (64 inputs, 10 classes)
and Sum Sign (64 inputs, labels 0/1 on 10 outputs). Meta-training reads the train split where
the data root has one and the test split otherwise (KMNIST and EMNIST: test only); meta-testing
reads the test splits, on the lifetimes ``rulegym compare`` draws for the seed, which no
meta-training lifetime meets however long it runs.

Writes into ``--out``: ``rules/<agent>/<train set>/`` (each meta-training run folder, with its
meta-parameters; finished runs are reused, so an interrupted grid resumes, and a larger
``--iterations`` continues them), ``grid.csv`` (agent,
train set, test set, mean online accuracy over the lifetime and its 95% interval over test
lifetimes), ``grid.md`` and one heat map per agent ``heatmap_<agent>.png``/``.svg``.

    RULEGYM_DATA=../shared/data python -m rulegym.train.experiments.vsml_fig8 --quick --out runs/fig8_quick

``--quick``: VSML and the Meta RNN, training sets MNIST, Random and "all", 30 meta-iterations of
8 lifetimes x 50 steps. The full grid (default): all four agents, all 13 training sets, 600
iterations of 8 x 100 steps (VSML needs about that many to start learning at this scale).
Measured per rule on one core of the 2-core machine, with another job on the other core: VSML
11 min, Meta RNN 1.4 min, Hebbian 1.2 min, FWM 9-15 min (0.9-1.5 s per meta-iteration); VSML and
the Meta RNN over all 13 sets took 88 min on 2 cores, FWM's 13 rules about 90 min (two processes
splitting the sets), and a last run reusing all 52 rules 7 min. The paper's rules had far more
compute.
``--agents`` and ``--sets`` pick agents and training sets, so processes can share the cores; a
last run over everything then reuses every finished rule and writes the whole grid.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch

DATASETS: dict[str, tuple[str, dict]] = {
    "MNIST": ("rulegym/MNIST-v0", {"resize": 8}),
    "FashionMNIST": ("rulegym/FashionMNIST-v0", {"resize": 8}),
    "KMNIST": ("rulegym/KMNIST-v0", {"resize": 8}),
    "EMNIST": ("rulegym/EMNIST-v0", {"resize": 8, "variant": "mnist"}),
    "Random": ("rulegym/Random-v0", {"x_shape": 64, "n_classes": 10}),
    "SumSign": ("rulegym/SumSign-v0", {"x_shape": 64, "n_classes": 10}),
}
#: splits the shared data root lacks for meta-training (only test splits there)
TEST_ONLY = {"KMNIST", "EMNIST"}
LEARNED = ("vsml", "meta_rnn", "hebbian", "fwm")
BASELINES = {"sgd": {"lr": 0.03}, "adam": {"lr": 0.003}}
AGENT_OPTIONS = {"vsml": {"input_bias": 0.0, "forget_bias": 3.0}, "meta_rnn": {}, "hebbian": {}, "fwm": {}}
#: meta-learning rates: those of the shipped rules' configs (learners/configs/*_mnist_bptt.toml)
LR = {"vsml": 5e-3, "meta_rnn": 1e-3, "hebbian": 1e-3, "fwm": 1e-3}


def training_sets(names: list[str]) -> dict[str, list[str]]:
    """Single datasets, "all", and leave-one-out ("no <name>") mixtures."""
    sets = {name: [name] for name in names}
    sets["all"] = list(names)
    for name in names:
        sets[f"no {name}"] = [n for n in names if n != name]
    return sets


def _task(name: str, split: str, length: int) -> dict:
    env_id, options = DATASETS[name]
    options = dict(options, lifetime_length=length)
    if name not in ("Random", "SumSign"):  # the image datasets have splits
        options["split"] = "test" if (split == "train" and name in TEST_ONLY) else split
    return {"env_id": env_id, "options": options}


def rule_dir(out: Path, agent: str, train: str) -> Path:
    """The run folder of ``agent``'s rule meta-trained on the training set ``train``."""
    return out / "rules" / agent / train.replace(" ", "_")


def trained_iterations(run_dir: Path) -> int | None:
    """How many iterations the finished rule in ``run_dir`` was meta-trained for (None: none there)."""
    from rulegym.learners.run import CONFIG_NAME

    if not (run_dir / "meta_params.pt").is_file():
        return None
    return json.loads((run_dir / CONFIG_NAME).read_text()).get("iterations")


def meta_train_rule(agent: str, datasets: list[str], run_dir: Path, iterations: int, batch: int, length: int, seed: int) -> Path:
    """Meta-train ``agent`` on the mixture of ``datasets``. A finished rule of as many iterations
    is reused; one of fewer is continued to ``iterations`` (its checkpoint resumed); one of more
    is an error (another ``--out`` keeps both)."""
    from rulegym.learners.run import meta_train

    params = run_dir / "meta_params.pt"
    if params.is_file():
        done = trained_iterations(run_dir)
        if done == iterations:
            return params
        if not isinstance(done, int) or done > iterations:
            raise ValueError(f"{run_dir} holds a rule meta-trained for {done} iterations, not {iterations}; "
                             "use another --out folder, or --iterations " + str(done) + " to reuse it.")
    config = {
        "learner": "bptt", "agent": agent, "agent_options": AGENT_OPTIONS[agent],
        "tasks": [_task(name, "train", length) for name in datasets],
        "iterations": iterations, "batch_size": batch, "lr": LR[agent], "grad_clip": 1.0,
        "eval_every": 0, "eval_lifetimes": 2, "checkpoint_every": max(1, iterations // 5),
        "num_threads": torch.get_num_threads(), "seed": seed, "progress": False, "tensorboard": False,
    }
    meta_train(config, run_dir, resume=(run_dir / "checkpoint.pt").is_file())
    return params


def meta_test(agent_name: str, options: dict, params: Path | None, dataset: str, lifetimes: int, length: int, seed: int) -> tuple[float, float]:
    """Mean online accuracy over a lifetime and its 95% interval over ``lifetimes`` lifetimes."""
    import gymnasium as gym

    import rulegym.envs  # noqa: F401
    from rulegym.train.compare import AgentSpec
    from rulegym.train.loop import env_dims, run_lifetime
    from rulegym.train.results import interval95

    task = _task(dataset, "test", length)
    env = gym.make_vec(task["env_id"], num_envs=lifetimes, **task["options"])
    x_dim, n_classes = env_dims(env)
    agent = AgentSpec(agent_name, options=options, params=str(params) if params else "").build(x_dim, n_classes)
    result = run_lifetime(agent, env, seed=seed)
    env.close()
    return interval95(result.correct.float().mean(dim=0).tolist())


def write_outputs(rows: list[dict], out: Path) -> None:
    from rulegym.train.results import plot_heatmap

    with open(out / "grid.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tests = list(dict.fromkeys(r["test"] for r in rows))
    lines = []
    for agent in dict.fromkeys(r["agent"] for r in rows):
        lines += [f"### {agent}", "", "| meta-train \\ meta-test | " + " | ".join(tests) + " |", "|---" * (len(tests) + 1) + "|"]
        for train in dict.fromkeys(r["train"] for r in rows if r["agent"] == agent):
            cells = {r["test"]: r for r in rows if r["agent"] == agent and r["train"] == train}
            lines.append(f"| {train} | " + " | ".join(f"{cells[t]['accuracy']:.3f} ± {cells[t]['ci95']:.3f}" for t in tests) + " |")
        lines.append("")
        plot_heatmap([{"agent": r["train"], "env": r["test"], "accuracy": r["accuracy"]} for r in rows if r["agent"] == agent],
                     "accuracy", out / f"heatmap_{agent}")
    (out / "grid.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="VSML and Meta RNN; MNIST, Random and all; 30 iterations")
    parser.add_argument("--agents", nargs="*", choices=LEARNED, help="learned agents to meta-train (default: all, or --quick's)")
    parser.add_argument("--sets", nargs="*", metavar="SET",
                        help='training sets to run (default: all 13; names as in the grid: MNIST, ..., "all", "no MNIST", ...)')
    parser.add_argument("--iterations", type=int, help="meta-iterations per rule (default 600, --quick 30)")
    parser.add_argument("--test-lifetimes", type=int, default=16)
    parser.add_argument("--test-steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from rulegym.learners.tasks import compare_seed_base

    torch.set_num_threads(args.threads)
    names = list(DATASETS)
    agents = args.agents or (["vsml", "meta_rnn"] if args.quick else list(LEARNED))
    sets = training_sets(names)
    if args.quick:
        sets = {k: sets[k] for k in ("MNIST", "Random", "all")}
    if args.sets:
        unknown = sorted(set(args.sets) - set(sets))
        if unknown:
            parser.error(f"unknown training set(s) {unknown}; valid: {', '.join(sets)}")
        sets = {k: v for k, v in sets.items() if k in args.sets}
    iterations = args.iterations or (30 if args.quick else 600)
    length = 50 if args.quick else 100
    longer = [f"{agent}/{train}: {done}" for agent in agents for train in sets
              if (done := trained_iterations(rule_dir(args.out, agent, train))) is not None and done > iterations]
    if longer:  # before anything is written (a rule of fewer iterations is continued)
        parser.error(f"{args.out} holds rules meta-trained for more than {iterations} iterations ({', '.join(longer)}); "
                     "use another --out, or their --iterations to reuse them.")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "settings.json").write_text(json.dumps({"agents": agents, "training_sets": sets, "iterations": iterations,
                                                         "train_steps": length, "test_steps": args.test_steps,
                                                         "test_lifetimes": args.test_lifetimes, "seed": args.seed}, indent=2))
    rows = []
    # the lifetimes `rulegym compare` draws for this seed: apart from every meta-training lifetime
    # (those are seeded seed * 2**40 + their position, so a fixed offset would meet them once
    # enough iterations have run)
    test_seed = compare_seed_base(args.seed)
    for name, options in BASELINES.items():
        for test in names:
            acc, ci = meta_test(name, options, None, test, args.test_lifetimes, args.test_steps, test_seed)
            rows.append({"agent": name, "train": "(none)", "test": test, "accuracy": round(acc, 4), "ci95": round(ci, 4)})
            print(json.dumps(rows[-1]), flush=True)
    for agent in agents:
        for train, datasets in sets.items():
            params = meta_train_rule(agent, datasets, rule_dir(args.out, agent, train), iterations, 8, length, args.seed)
            for test in names:
                acc, ci = meta_test(agent, AGENT_OPTIONS[agent], params, test, args.test_lifetimes, args.test_steps, test_seed)
                rows.append({"agent": agent, "train": train, "test": test, "accuracy": round(acc, 4), "ci95": round(ci, 4)})
                print(json.dumps(rows[-1]), flush=True)
            write_outputs(rows, args.out)
    write_outputs(rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Introspection (VSML Figures 9 and 17): what a learner predicts, step by step, on one stream.

Runs agents on the same lifetime (same env, options and seed) and draws, for each agent, the
output probabilities of every class at every step of the stream as a heat map with the true
label of each step marked; a cross marks a wrong prediction. One reads off when each class is
first seen, how many examples of it the learner needs, and whether it forgets. Writes
``introspection.png``/``.svg`` (one panel per agent), ``probabilities.npz`` (per agent: the
probabilities [steps, classes], labels, correct) and ``summary.json`` (per agent: accuracy over
the stream and on the first / later occurrences of each class).

    RULEGYM_DATA=../shared/data python -m rulegym.train.experiments.introspection \\
        --agents vsml_mnist sgd --env rulegym/MNIST-v0 --set split=test num_classes=3 --steps 100 --out runs/introspection

``--set`` takes env options as key=value (values parsed as JSON, else strings; ``num_classes=3``
draws a 3-class subset per lifetime, relabelled, as in the paper's figure). Agents are
registered names or shipped rules; ``--params AGENT=PATH`` loads saved meta-parameters.
With no data root, ``--env rulegym/Digits-v0`` runs on the embedded 8x8 digits.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import rulegym.envs  # noqa: F401  (registers the env ids)
from rulegym.learners.config import ConfigError, apply_overrides
from rulegym.train.compare import AgentSpec
from rulegym.train.loop import env_dims, run_lifetime


def parse_options(items: list[str]) -> dict:
    """Env options from ``key=value`` items (the learners' override syntax)."""
    try:
        return apply_overrides({}, items)
    except ConfigError as err:
        raise SystemExit(str(err)) from err


def introspect(specs: list[AgentSpec], env_id: str, options: dict, steps: int, seed: int) -> dict[str, dict]:
    """Run every agent on the same single lifetime; returns per agent its probabilities,
    labels and correctness over the stream."""
    out = {}
    for spec in specs:
        env = gym.make_vec(env_id, num_envs=1, **{**options, "lifetime_length": steps})
        x_dim, n_classes = env_dims(env)
        agent = spec.build(x_dim, n_classes)
        result = run_lifetime(agent, env, seed=seed, keep_logits=True)
        env.close()
        probs = torch.softmax(result.logits[:, 0].float(), dim=-1).numpy()
        labels = result.labels[:, 0].numpy()
        correct = result.correct[:, 0].numpy()
        out[spec.label] = {"probabilities": probs, "labels": labels, "correct": correct}
    return out


def occurrence_accuracy(labels: np.ndarray, correct: np.ndarray) -> dict[str, float | None]:
    """Accuracy on each class's first occurrence and on its later occurrences."""
    seen: set[int] = set()
    first, later = [], []
    for label, ok in zip(labels.tolist(), correct.tolist()):
        (later if label in seen else first).append(ok)
        seen.add(label)
    mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
    return {"first_occurrence": mean(first), "later_occurrences": mean(later)}


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(n, 1, figsize=(12, 1.2 + 1.9 * n), squeeze=False, constrained_layout=True)
    for ax, (label, r) in zip(axes[:, 0], results.items()):
        probs, labels, correct = r["probabilities"], r["labels"], r["correct"]
        steps, classes = probs.shape
        im = ax.imshow(probs.T, aspect="auto", origin="lower", cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        t = np.arange(steps)
        ax.scatter(t[correct], labels[correct], s=10, facecolors="none", edgecolors="cyan", linewidths=0.8, label="label (right)")
        ax.scatter(t[~correct], labels[~correct], s=12, marker="x", color="cyan", linewidths=0.8, label="label (wrong)")
        ax.set_ylabel("class")
        ax.set_title(f"{label}: accuracy {correct.mean():.2f}", fontsize=10)
        ax.set_yticks(range(classes) if classes <= 12 else np.linspace(0, classes - 1, 6).astype(int))
        fig.colorbar(im, ax=ax, label="p(class)")
    axes[-1, 0].set_xlabel("step (example) of the stream")
    axes[0, 0].legend(loc="upper right", fontsize=7, framealpha=0.6)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path.with_suffix(".png"), dpi=110)
    fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", nargs="+", default=["vsml_mnist", "sgd"], help="registered agents or shipped rules")
    parser.add_argument("--params", nargs="*", default=[], metavar="AGENT=PATH", help="saved meta-parameters for an agent")
    parser.add_argument("--env", default="rulegym/MNIST-v0")
    parser.add_argument("--set", nargs="*", default=["split=test", "num_classes=3"], metavar="KEY=VALUE", help="env options")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    torch.set_num_threads(args.threads)
    malformed = [item for item in args.params if "=" not in item]
    if malformed:
        parser.error(f"--params takes AGENT=PATH items (e.g. vsml=runs/vsml/meta_params.pt), got {malformed}")
    params = dict(item.split("=", 1) for item in args.params)
    unknown = sorted(set(params) - set(args.agents))
    if unknown:
        parser.error(f"--params names agents that are not in --agents: {unknown}")
    try:
        specs = [AgentSpec(name, params=params.get(name, "")) for name in args.agents]
    except ValueError as err:  # e.g. a params file that does not exist
        parser.error(str(err))
    results = introspect(specs, args.env, parse_options(args.set), args.steps, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "introspection")
    np.savez_compressed(args.out / "probabilities.npz", **{f"{k}/{f}": v for k, r in results.items() for f, v in r.items()})
    summary = {
        "env": args.env, "options": parse_options(args.set), "steps": args.steps, "seed": args.seed,
        "agents": {k: {"accuracy": float(r["correct"].mean()), **occurrence_accuracy(r["labels"], r["correct"])} for k, r in results.items()},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["agents"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

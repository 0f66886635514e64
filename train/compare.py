"""Compare agents on tasks over seeds: the main job of rulegym.

For every (agent, env, seed) cell the loop runs a batch of fresh lifetimes and keeps the
per-step records; the summary reports online (prequential) accuracy -- on the k-th example,
cumulative over the first k, and near the end of the lifetime -- as the mean over seeds with a
95% interval. A run folder holds the resolved config, the per-step results, the summary table
(markdown and CSV) and TensorBoard curves for all agents side by side.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from scipy import stats

from rulegym.agents import make_agent
from rulegym.envs import EMBEDDED_ENV_IDS, ENVS
from rulegym.train.loop import env_dims, evaluate

DEFAULT_AGENTS = ("sgd", "adam")


@dataclass
class CompareConfig:
    """One comparison: agents x envs x seeds, each cell a batch of ``lifetimes`` lifetimes."""

    agents: list[str] = field(default_factory=lambda: list(DEFAULT_AGENTS))
    envs: list[str] = field(default_factory=lambda: list(EMBEDDED_ENV_IDS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    lifetimes: int = 16
    steps: int = 500
    agent_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    env_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    ks: list[int] = field(default_factory=lambda: [10, 100])

    def validate(self) -> None:
        from rulegym.agents import AGENTS

        bad_agents = [a for a in self.agents if a not in AGENTS]
        if bad_agents:
            raise ValueError(f"unknown agent(s) {bad_agents}; registered agents: {', '.join(sorted(AGENTS))}.")
        bad_envs = [e for e in self.envs if e not in ENVS]
        if bad_envs:
            raise ValueError(f"unknown env id(s) {bad_envs}; registered: {', '.join(ENVS)}.")
        for name, value in (("lifetimes", self.lifetimes), ("steps", self.steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not self.seeds:
            raise ValueError("give at least one seed.")
        if any(k < 1 or k > self.steps for k in self.ks):
            raise ValueError(f"every k in ks must lie in 1..steps={self.steps}, got {self.ks}.")


def interval95(values: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval over seeds (half-width NaN for one seed)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if values.size < 2:
        return mean, math.nan
    half = float(stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))
    return mean, half


def cell_metrics(correct: np.ndarray, mask: np.ndarray, ks: list[int]) -> dict[str, float]:
    """Online accuracy metrics of one cell from its [T, B] records (masked steps only)."""
    steps = correct.shape[0]
    hits = (correct & mask).astype(np.float64)
    counted = mask.astype(np.float64)

    def mean_over(sl: slice) -> float:
        n = counted[sl].sum()
        return float(hits[sl].sum() / n) if n else math.nan

    out = {"acc_all": mean_over(slice(None))}
    for k in ks:
        out[f"acc_at_{k}"] = mean_over(slice(k - 1, k))
        out[f"acc_first_{k}"] = mean_over(slice(0, k))
    tail = max(1, steps // 10)
    out["acc_last_10pct"] = mean_over(slice(steps - tail, steps))
    return out


def run_compare(cfg: CompareConfig, out_dir: Path, progress: bool = True) -> list[dict[str, Any]]:
    """Run every cell, write the run folder, and return the summary rows."""
    from torch.utils.tensorboard import SummaryWriter

    cfg.validate()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    records: dict[str, np.ndarray] = {}
    per_cell: dict[tuple[str, str], list[dict[str, float]]] = {}
    cells = [(a, e, s) for e in cfg.envs for a in cfg.agents for s in cfg.seeds]
    start = time.perf_counter()
    for i, (agent_name, env_id, seed) in enumerate(cells):
        opts = {"lifetime_length": cfg.steps, **cfg.env_options.get(env_id, {})}
        probe = gym.make_vec(env_id, num_envs=1, **opts)
        x_dim, n_classes = env_dims(probe)
        probe.close()
        torch.manual_seed(seed)  # meta-parameter init of agents that have some
        agent = make_agent(agent_name, x_dim, n_classes, **cfg.agent_options.get(agent_name, {}))
        result = evaluate(agent, env_id, num_envs=cfg.lifetimes, seed=seed, steps=cfg.steps, env_options=opts)
        correct, mask = result.correct.numpy(), result.loss_mask.numpy()
        key = f"{agent_name}|{env_id}|{seed}"
        records[key + "|correct"] = correct
        records[key + "|loss_mask"] = mask
        records[key + "|loss"] = result.loss.detach().float().numpy()
        per_cell.setdefault((agent_name, env_id), []).append(cell_metrics(correct, mask, cfg.ks))
        if progress:
            done = i + 1
            eta = (time.perf_counter() - start) / done * (len(cells) - done)
            print(f"[{done}/{len(cells)}] {agent_name} on {env_id} seed {seed}: "
                  f"acc {per_cell[(agent_name, env_id)][-1]['acc_all']:.3f}  (eta {eta:.0f}s)", flush=True)
    np.savez_compressed(out_dir / "results.npz", **records)

    rows = []
    for (agent_name, env_id), metrics in per_cell.items():
        row: dict[str, Any] = {"agent": agent_name, "env": env_id, "seeds": len(metrics)}
        for name in metrics[0]:
            mean, half = interval95(np.array([m[name] for m in metrics]))
            row[name], row[name + "_ci95"] = mean, half
        rows.append(row)
    write_tables(rows, out_dir)
    write_tensorboard(records, cfg, out_dir / "tensorboard", SummaryWriter)
    return rows


def write_tables(rows: list[dict[str, Any]], out_dir: Path) -> None:
    """summary.csv (every number) and summary.md (mean +- 95% interval)."""
    with open(out_dir / "summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "summary.md").write_text(markdown_table(rows))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    metrics = [k for k in rows[0] if k.startswith("acc") and not k.endswith("_ci95")]
    lines = ["| agent | env | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for r in rows:
        cells = []
        for m in metrics:
            half = r[m + "_ci95"]
            cells.append(f"{r[m]:.3f}" + ("" if math.isnan(half) else f" ± {half:.3f}"))
        lines.append(f"| {r['agent']} | {r['env']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tensorboard(records: dict[str, np.ndarray], cfg: CompareConfig, logdir: Path, writer_cls) -> None:
    """Online accuracy curves (mean over lifetimes and seeds), one run per agent, one tag per env."""
    for agent_name in cfg.agents:
        writer = writer_cls(log_dir=str(logdir / agent_name))
        for env_id in cfg.envs:
            keys = [f"{agent_name}|{env_id}|{s}" for s in cfg.seeds]
            correct = np.concatenate([records[k + "|correct"] for k in keys], axis=1)
            mask = np.concatenate([records[k + "|loss_mask"] for k in keys], axis=1)
            counted = mask.sum(axis=1)
            curve = np.where(counted > 0, (correct & mask).sum(axis=1) / np.maximum(counted, 1), np.nan)
            tag = "online_accuracy/" + env_id.replace("rulegym/", "")
            for t, value in enumerate(curve):
                if not math.isnan(value):
                    writer.add_scalar(tag, float(value), global_step=t + 1)
        writer.close()

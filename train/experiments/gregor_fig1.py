"""Gregor (2020) Figure 1, CPU-sized: update-network types, delays, state sizes, LSTM baselines.

"Finding online neural update rules by learning to remember" compares vector-synapse networks
(VSN) with OP_h x OP_w update networks at delays 10 and 80 and state sizes 6 and 14 against
LSTM 16 / LSTM 128 on the Wizard of Oz character stream, all meta-trained by learning to
remember (:mod:`rulegym.learners.remember`). This module reruns that comparison at a scale a
laptop can afford and writes:

- ``runs.csv``: one row per run (config, seed, meta-parameters, network parameters, early and
  final losses in bits per character, seconds);
- ``summary.csv`` / ``summary.md``: per configuration, mean and best over seeds, and the
  paper's findings checked against the numbers;
- ``fig1.png``: heat maps of the final loss over OP_h x OP_w, one per delay (Figure 1
  left/middle), and the final loss against the number of network parameters (Figure 1 right);
- ``curves.npz``: every run's per-block curves;
- ``runs/``: each run's row and curves, written as soon as it finishes, so an interrupted call
  loses only the runs under way and the same command again runs only the missing ones (a
  folder of another budget is refused).

"Loss" is the learning-to-remember objective: the mean of the current block's and the past
snippet's prediction losses; *early* is its mean over the first 10% of the blocks and *final*
over the last 10%. "Network parameters" are what the learned network adapts during a lifetime
-- the synapse-state numbers of a VSN -- and, for the LSTMs, their weights (the paper's
parameter axis); the meta-parameters (the update networks) are reported too.

Run it::

    RULEGYM_DATA=../shared/data python -m rulegym.train.experiments.gregor_fig1 --quick --out runs/gregor_fig1_quick

``--quick`` (about 10 minutes on 2 cores: 12 CPU-minutes, 12.8 min wall on a shared 2-core
machine) uses OP_h, OP_w in {MLP, LSTM, GATED}, one seed on that grid, two seeds for the
state-size, baseline and scaling comparisons, 16 hidden neurons and 1000-step streams (100
meta-updates); ``--budget small`` / ``full`` grow towards the paper (all six OPs, more seeds,
longer streams; the paper trained far longer, on GPUs). ``--report-only --out DIR`` rewrites
the tables and the figure of a finished run folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np

LN2 = math.log(2.0)
ENV_ID = "rulegym/WizardOfOz-v0"


@dataclass(frozen=True)
class Budget:
    """How big a Figure-1 run is. Every VSN uses Gregor's tied char-stream layout."""

    name: str
    #: online steps per run (per lifetime); every T steps is one meta-update
    steps: int
    #: lifetimes (parallel streams) per run
    num_envs: int
    ops_h: tuple[str, ...]
    ops_w: tuple[str, ...]
    #: seeds of the OP_h x OP_w grid
    grid_seeds: int
    #: seeds of the state-size, baseline and neuron-scaling comparisons
    seeds: int
    delays: tuple[int, ...] = (10, 80)
    #: the grid's state size; the state-size comparison uses every size in ``state_sizes``
    grid_state: int = 6
    state_sizes: tuple[int, ...] = (6, 14)
    #: (op_h, op_w) pairs compared across state sizes
    state_pairs: tuple[tuple[str, str], ...] = (("gated", "gated"),)
    neurons: int = 16
    hidden_layers: int = 1
    op_hidden: int = 16
    embed_dim: int = 4
    #: hidden neurons of the scaling comparison (at the largest delay, the first state pair)
    neuron_scaling: tuple[int, ...] = (8, 16, 32)
    lstm_sizes: tuple[int, ...] = (16, 128)
    T: int = 10
    #: Adam learning rate of every run (1e-2 learned fastest for both VSN and LSTM 16 in a
    #: 1000-step pilot at delay 80 among 1e-3, 3e-3, 1e-2)
    lr: float = 1e-2
    clip: float = 1.0
    split: str = "train"


BUDGETS: dict[str, Budget] = {
    "quick": Budget(
        name="quick", steps=1000, num_envs=3, ops_h=("mlp", "lstm", "gated"), ops_w=("mlp", "lstm", "gated"),
        grid_seeds=1, seeds=2, neuron_scaling=(8, 16, 24),
    ),
    "small": Budget(
        name="small", steps=3000, num_envs=8, ops_h=("mlp", "mlp_tanh", "lstm", "lstm_sigmoid", "lstm_id", "gated"),
        ops_w=("mlp", "mlp_tanh", "lstm", "lstm_sigmoid", "lstm_id", "gated"), grid_seeds=1, seeds=3,
        state_pairs=(("gated", "gated"), ("lstm", "gated"), ("gated", "lstm")), neuron_scaling=(8, 16, 32, 64),
    ),
    "full": Budget(
        name="full", steps=20000, num_envs=16, ops_h=("mlp", "mlp_tanh", "lstm", "lstm_sigmoid", "lstm_id", "gated"),
        ops_w=("mlp", "mlp_tanh", "lstm", "lstm_sigmoid", "lstm_id", "gated"), grid_seeds=3, seeds=3, neurons=32,
        op_hidden=32, state_pairs=(("gated", "gated"), ("lstm", "gated"), ("gated", "lstm")),
        neuron_scaling=(16, 32, 64, 128),
    ),
}


@dataclass(frozen=True)
class Job:
    """One meta-training run."""

    kind: str  # "vsn" or "lstm"
    delay: int
    seed: int
    op_h: str = ""
    op_w: str = ""
    state_size: int = 0
    neurons: int = 0  # hidden neurons (VSN) or LSTM units
    groups: tuple[str, ...] = field(default=(), compare=False)

    @property
    def key(self) -> tuple:
        return (self.kind, self.delay, self.op_h, self.op_w, self.state_size, self.neurons, self.seed)

    @property
    def config(self) -> str:
        if self.kind == "lstm":
            return f"LSTM {self.neurons}"
        return f"VSN h={self.op_h} w={self.op_w} n={self.state_size} N={self.neurons}"


def plan(budget: Budget) -> list[Job]:
    """The runs of a budget, deduplicated; ``groups`` says which comparisons use each."""
    jobs: dict[tuple, Job] = {}

    def add(job: Job, group: str) -> None:
        old = jobs.get(job.key)
        jobs[job.key] = replace(job, groups=(old.groups if old else ()) + (group,))

    for delay in budget.delays:
        for op_h in budget.ops_h:
            for op_w in budget.ops_w:
                for seed in range(budget.grid_seeds):
                    add(Job("vsn", delay, seed, op_h, op_w, budget.grid_state, budget.neurons), "grid")
        for op_h, op_w in budget.state_pairs:
            for size in budget.state_sizes:
                for seed in range(budget.seeds):
                    add(Job("vsn", delay, seed, op_h, op_w, size, budget.neurons), "state")
        for units in budget.lstm_sizes:
            for seed in range(budget.seeds):
                add(Job("lstm", delay, seed, neurons=units), "lstm")
    op_h, op_w = budget.state_pairs[0]
    for neurons in budget.neuron_scaling:
        for seed in range(budget.seeds):
            add(Job("vsn", max(budget.delays), seed, op_h, op_w, budget.grid_state, neurons), "scaling")
    # longest first, so the pool finishes together
    return sorted(jobs.values(), key=lambda j: -(_cost(j, budget)))


def _cost(job: Job, budget: Budget) -> float:
    if job.kind == "lstm":
        return 0.05 * (1 + job.neurons / 128)
    n_total = 27 + job.neurons * budget.hidden_layers
    return n_total**2 * (job.state_size + budget.op_hidden) / 1e4


def build_agent(job: Job, budget: Budget):
    from rulegym.agents import make_agent

    if job.kind == "lstm":
        return make_agent("meta_rnn", 27, 27, hidden=job.neurons)
    return make_agent(
        "vsn", 27, 27, io="tied", state_size=job.state_size, neurons=job.neurons, hidden_layers=budget.hidden_layers,
        op_h=job.op_h, op_w=job.op_w, op_hidden=budget.op_hidden, embed_dim=budget.embed_dim,
    )


def network_parameters(agent) -> int:
    """What the network adapts within a lifetime: synapse-state numbers (VSN) or weights (LSTM)."""
    if hasattr(agent, "num_synapses"):
        return agent.num_synapses() * agent.state_size
    return sum(p.numel() for p in agent.parameters())


def run_job(job: Job, budget: Budget) -> dict[str, Any]:
    """Meta-train one agent by learning to remember; returns a results row (and curves)."""
    import torch

    from rulegym.learners.remember import train_remember

    torch.manual_seed(1000 * job.seed + 17)
    agent = build_agent(job, budget)
    res = train_remember(
        agent, ENV_ID, T=budget.T, delay=job.delay, steps=budget.steps, num_envs=budget.num_envs, lr=budget.lr,
        clip=budget.clip, seed=job.seed, env_options={"split": budget.split},
    )
    row = {
        "config": job.config,
        "kind": job.kind,
        "delay": job.delay,
        "op_h": job.op_h,
        "op_w": job.op_w,
        "state_size": job.state_size,
        "neurons": job.neurons,
        "seed": job.seed,
        "groups": "+".join(job.groups),
        "meta_parameters": sum(p.numel() for p in agent.parameters()),
        "network_parameters": network_parameters(agent),
        **{k: round(v, 4) for k, v in res.summary.items()},
        "seconds": round(res.seconds, 1),
    }
    return {"job": job, "row": row, "online": res.online_curve, "remember": res.remember_curve}


def _run_file(job: Job) -> str:
    """The file name of a finished run: its key, in characters safe in any file system."""
    return "__".join(str(part) for part in job.key).replace("=", "").replace(" ", "_") + ".npz"


def _save_run(path: Path, res: dict[str, Any]) -> None:
    """Write one run's row and curves atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, job=json.dumps(asdict(res["job"])), row=json.dumps(res["row"]), online=res["online"], remember=res["remember"])
    os.replace(tmp, path)


def _load_run(path: Path) -> dict[str, Any]:
    try:
        with np.load(path) as z:
            job = json.loads(str(z["job"]))
            return {"job": Job(**{**job, "groups": tuple(job["groups"])}), "row": json.loads(str(z["row"])),
                    "online": z["online"], "remember": z["remember"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"finished run {path} cannot be read ({err}); delete it to run it again.") from err


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # small sequential steps: processes scale, threads thrash


def _run_star(args: tuple[Job, Budget]) -> dict[str, Any]:
    return run_job(*args)


# ------------------------------------------------------------------ summary


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration and delay: mean and best (min) over seeds of the losses."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["config"], r["delay"]), []).append(r)
    out = []
    for (config, delay), rs in groups.items():
        final = np.array([r["final_loss_bits"] for r in rs])
        early = np.array([r["early_loss_bits"] for r in rs])
        out.append({
            "config": config, "delay": delay, "kind": rs[0]["kind"], "op_h": rs[0]["op_h"], "op_w": rs[0]["op_w"],
            "state_size": rs[0]["state_size"], "neurons": rs[0]["neurons"], "seeds": len(rs),
            "meta_parameters": rs[0]["meta_parameters"], "network_parameters": rs[0]["network_parameters"],
            "early_mean": round(float(early.mean()), 3), "final_mean": round(float(final.mean()), 3),
            "final_best": round(float(final.min()), 3),
            "final_remember_mean": round(float(np.mean([r["final_remember_bits"] for r in rs])), 3),
            "final_online_mean": round(float(np.mean([r["final_online_bits"] for r in rs])), 3),
        })
    return sorted(out, key=lambda s: (s["delay"], s["kind"] != "vsn", s["final_mean"]))


def grid_rows(rows: list[dict[str, Any]], budget: Budget) -> list[dict[str, Any]]:
    """Every VSN run with the grid's state size and neurons (all seeds, whichever comparison ran it)."""
    return [
        r for r in rows
        if r["kind"] == "vsn" and r["state_size"] == budget.grid_state and r["neurons"] == budget.neurons
        and r["op_h"] in budget.ops_h and r["op_w"] in budget.ops_w
    ]


def grid_cell(grid: list[dict[str, Any]], delay: int, op_h: str, op_w: str, key: str = "final_loss_bits") -> float:
    """Mean over seeds of one OP_h x OP_w cell."""
    return _mean((r for r in grid if r["delay"] == delay and r["op_h"] == op_h and r["op_w"] == op_w), key)


def _mean(rows: Iterable[dict], key: str = "final_loss_bits") -> float:
    vals = [r[key] for r in rows]
    return float(np.mean(vals)) if vals else math.nan


def findings(rows: list[dict[str, Any]], budget: Budget) -> list[str]:
    """The paper's Figure-1 claims, each checked against these runs with its numbers."""
    lines = []
    grid = grid_rows(rows, budget)
    big = max(budget.delays)

    def by_op_w(delay: int, key: str = "final_loss_bits") -> dict[str, float]:
        """Per OP_w: the mean over OP_h of each cell's mean over seeds."""
        return {w: float(np.nanmean([grid_cell(grid, delay, h, w, key) for h in budget.ops_h])) for w in budget.ops_w}

    noise = seed_spread(rows)

    def margin(diff: float) -> str:
        """Whether a difference stands out of the seed-to-seed spread of this budget."""
        if not math.isfinite(noise):
            return ""
        return ", beyond the seed spread" if abs(diff) > noise else ", within the seed spread"

    # 1. GATED weight updates best at the long delay
    if grid and "gated" in budget.ops_w:
        m = by_op_w(big)
        ranked = sorted(m.items(), key=lambda kv: kv[1])
        best = ranked[0][0]
        nums = ", ".join(f"{w} {v:.3f}" for w, v in ranked)
        runner = ranked[1][1] - ranked[0][1] if len(ranked) > 1 else math.nan
        lines.append(
            f"GATED weight updates best at delay {big}: {'HELD' if best == 'gated' else 'NOT HELD'}"
            f"{margin(runner) if best == 'gated' else ''} (final loss, bits/char, mean over OP_h and seeds, by OP_w: {nums})."
        )
    # 2. MLP weight updates fail
    if grid and "mlp" in budget.ops_w:
        parts, fails = [], []
        for d in budget.delays:
            m = by_op_w(d)
            early = by_op_w(d, "early_loss_bits")
            gain = {w: m[w] - early[w] for w in budget.ops_w}
            worst = max(m, key=m.get)
            fails.append(worst == "mlp")
            parts.append(
                f"delay {d}: MLP {m['mlp']:.3f} (change from early {gain['mlp']:+.3f}) vs best other "
                f"{min(v for w, v in m.items() if w != 'mlp'):.3f}"
            )
        verdict = "HELD" if all(fails) else ("PARTLY" if any(fails) else "NOT HELD")
        lines.append(f"MLP weight updates fail (worst OP_w): {verdict} ({'; '.join(parts)}).")
    # 3. state 14 better than 6
    st = [r for r in rows if "state" in r["groups"] or "grid" in r["groups"]]
    if len(budget.state_sizes) > 1:
        parts, wins, total = [], 0, 0
        lo, hi = min(budget.state_sizes), max(budget.state_sizes)
        for d in budget.delays:
            for op_h, op_w in budget.state_pairs:
                sel = [r for r in st if r["delay"] == d and r["op_h"] == op_h and r["op_w"] == op_w and r["neurons"] == budget.neurons]
                a = _mean(r for r in sel if r["state_size"] == lo)
                b = _mean(r for r in sel if r["state_size"] == hi)
                if math.isfinite(a) and math.isfinite(b):
                    total += 1
                    wins += b < a
                    parts.append(f"delay {d} {op_h}/{op_w}: {lo} -> {a:.3f}, {hi} -> {b:.3f}{margin(a - b)}")
        verdict = "HELD" if wins == total and total else ("PARTLY" if wins else "NOT HELD")
        lines.append(f"State {hi} better than {lo}: {verdict} ({'; '.join(parts)}).")
    # 4. VSN better than the LSTMs up to delay 80: on the objective and on its remember half
    for key, label in (("final_mean", "objective"), ("final_remember_mean", "remember half only")):
        parts, wins = [], []
        for d in budget.delays:
            vsn = [r for r in rows if r["kind"] == "vsn" and r["delay"] == d]
            summ = summarize(vsn) if vsn else []
            lstm = summarize([r for r in rows if r["kind"] == "lstm" and r["delay"] == d])
            if summ and lstm:
                bv = min(summ, key=lambda s: s[key])
                bl = min(lstm, key=lambda s: s[key])
                wins.append(bv[key] < bl[key])
                lstm_txt = ", ".join(f"{s['config']} {s[key]:.3f}" for s in lstm)
                parts.append(f"delay {d}: best VSN ({bv['config']}) {bv[key]:.3f} vs {lstm_txt}{margin(bv[key] - bl[key])}")
        if wins:
            verdict = "HELD" if all(wins) else ("PARTLY" if any(wins) else "NOT HELD")
            lines.append(f"VSN better than the LSTMs, {label} (mean final loss of the best config): {verdict} ({'; '.join(parts)}).")
    # 5. scaling with the number of neurons (the paper found none)
    sc = [r for r in rows if "scaling" in r["groups"]]
    if sc:
        ns = sorted({r["neurons"] for r in sc})
        m = {n: _mean(r for r in sc if r["neurons"] == n) for n in ns}
        nums = ", ".join(f"{n} neurons {m[n]:.3f}" for n in ns)
        spread = max(m.values()) - min(m.values())
        gain = m[ns[0]] - m[ns[-1]]
        if gain > max(0.05, noise if math.isfinite(noise) else 0.0):
            verdict = "NOT HELD (more neurons are better beyond the seed spread)"
        elif gain > 0.05:
            verdict = "INCONCLUSIVE (more neurons look better, within the seed spread)"
        else:
            verdict = "HELD"
        lines.append(f"No improvement with more neurons (paper): {verdict} at delay {big} ({nums}; range {spread:.3f} bits).")
    if math.isfinite(noise):
        lines.append(
            f"Seed-to-seed spread of the final loss (max - min over seeds, mean over configs with >= 2 seeds): {noise:.3f} "
            "bits; differences smaller than this are within the noise of this budget."
        )
    return lines


def seed_spread(rows: list[dict[str, Any]]) -> float:
    """Mean over configurations with several seeds of (max - min) final loss over seeds."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["config"], r["delay"]), []).append(r["final_loss_bits"])
    spreads = [max(v) - min(v) for v in groups.values() if len(v) > 1]
    return float(np.mean(spreads)) if spreads else math.nan


def write_tables(out: Path, rows: list[dict], budget: Budget, seconds: float) -> list[str]:
    fields = list(rows[0]["row"].keys()) if rows and "row" in rows[0] else list(rows[0].keys())
    plain = [r["row"] if "row" in r else r for r in rows]
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(sorted(plain, key=lambda r: (r["delay"], r["config"], r["seed"])))
    summ = summarize(plain)
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summ[0].keys()))
        w.writeheader()
        w.writerows(summ)
    found = findings(plain, budget)
    lines = [
        f"# Gregor (2020) Figure 1, budget `{budget.name}`",
        "",
        f"Wizard of Oz ({budget.split} split), learning to remember with T={budget.T}, {budget.steps} online steps x "
        f"{budget.num_envs} streams per run, Adam lr {budget.lr}, clip {budget.clip}; VSN: tied layout, "
        f"{budget.hidden_layers} hidden layer(s), update-net width {budget.op_hidden}. Losses in bits/char "
        f"(objective = mean of current-block and past-snippet losses; early = first 10% of blocks, final = last 10%). "
        f"Wall time {seconds / 60:.1f} min.",
        "",
        "| delay | config | seeds | meta params | network params | early (mean) | final (mean) | final (best) | final remember | final online |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summ:
        lines.append(
            f"| {s['delay']} | {s['config']} | {s['seeds']} | {s['meta_parameters']} | {s['network_parameters']} | "
            f"{s['early_mean']:.3f} | {s['final_mean']:.3f} | {s['final_best']:.3f} | {s['final_remember_mean']:.3f} | "
            f"{s['final_online_mean']:.3f} |"
        )
    lines += ["", "## The paper's findings at this scale", ""] + [f"- {f}" for f in found]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return found


def plot(out: Path, rows: list[dict], budget: Budget) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = grid_rows(rows, budget)
    nd = len(budget.delays)
    fig, axes = plt.subplots(1, nd + 1, figsize=(4.6 * (nd + 1), 4.2))
    vals = [r["final_loss_bits"] for r in grid] or [0.0, 1.0]
    vmin, vmax = min(vals), max(vals)
    for ax, d in zip(axes, budget.delays):
        m = np.full((len(budget.ops_h), len(budget.ops_w)), np.nan)
        for i, oh in enumerate(budget.ops_h):
            for j, ow in enumerate(budget.ops_w):
                m[i, j] = grid_cell(grid, d, oh, ow)
        im = ax.imshow(m, cmap="viridis_r", vmin=vmin, vmax=vmax)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="w" if m[i, j] > (vmin + vmax) / 2 else "k", fontsize=8)
        ax.set_xticks(range(len(budget.ops_w)), budget.ops_w, rotation=45, ha="right")
        ax.set_yticks(range(len(budget.ops_h)), budget.ops_h)
        ax.set_xlabel("OP_w (synapse update)")
        ax.set_ylabel("OP_h (neuron update)")
        ax.set_title(f"final loss (bits/char, mean over seeds), delay {d}\nstate {budget.grid_state}, {budget.neurons} hidden neurons")
        fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[-1]
    summ = summarize(rows)
    markers = {d: m for d, m in zip(budget.delays, "os^vD")}
    for s in summ:
        color = "tab:red" if s["kind"] == "lstm" else ("tab:blue" if s["state_size"] == max(budget.state_sizes) else "tab:cyan")
        ax.scatter(s["network_parameters"], s["final_mean"], c=color, marker=markers.get(s["delay"], "o"), s=28, alpha=0.8)
        if s["kind"] == "lstm":
            ax.annotate(f"{s['config']} d{s['delay']}", (s["network_parameters"], s["final_mean"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("network parameters\n(VSN: synapse-state numbers; LSTM: weights)")
    ax.set_ylabel("final loss (bits/char)")
    ax.set_title("loss vs parameters\nred LSTM, blue VSN (dark: largest state)")
    for d, mk in markers.items():
        ax.scatter([], [], c="gray", marker=mk, label=f"delay {d}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "fig1.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_fig1(out_dir: str | os.PathLike, budget: str | Budget = "quick", *, workers: int = 2, progress: bool = True) -> dict[str, Any]:
    """Run the Figure-1 comparison at ``budget`` and write tables and the figure to ``out_dir``.

    ``budget`` is a name in :data:`BUDGETS` (``quick``, ``small``, ``full``) or a :class:`Budget`.
    Runs go to ``workers`` processes with one torch thread each. Returns the summary rows,
    the findings and the paths written. Needs the Wizard of Oz text (``$RULEGYM_DATA``).
    """
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise ValueError(f"unknown budget {budget!r}; valid: {', '.join(BUDGETS)} (or pass a Budget).")
        budget = BUDGETS[budget]
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # fail fast, in this process, when the text is missing
    from rulegym.envs.char_stream import CharStreamTask

    CharStreamTask(budget.split, lifetime_length=budget.steps)
    jobs = plan(budget)
    config = json.loads(json.dumps({"budget": asdict(budget), "jobs": [asdict(j) for j in jobs]}))
    config_path = out / "config.json"
    if config_path.exists() and json.loads(config_path.read_text()) != config:
        raise ValueError(f"{out} holds a Figure-1 run of another budget; use another output folder, or the same budget to resume it.")
    config_path.write_text(json.dumps(config, indent=1))
    t0 = time.perf_counter()
    # each finished run is written at once (runs/<job>.npz), so an interrupted call loses only
    # the runs under way, and the same call again runs only the missing ones
    runs_dir = out / "runs"
    runs_dir.mkdir(exist_ok=True)
    finished = {j.key for j in jobs if (runs_dir / _run_file(j)).is_file()}
    results: list[dict] = [_load_run(runs_dir / _run_file(j)) for j in jobs if j.key in finished]
    args = [(j, budget) for j in jobs if j.key not in finished]
    if workers == 1:
        _worker_init()
        it: Iterable = map(_run_star, args)
        pool = None
    else:
        pool = mp.get_context("spawn").Pool(workers, initializer=_worker_init)
        it = pool.imap_unordered(_run_star, args)
    try:
        for k, res in enumerate(it, len(results) + 1):
            _save_run(runs_dir / _run_file(res["job"]), res)
            results.append(res)
            if progress:
                r = res["row"]
                print(
                    f"[{k}/{len(jobs)} {time.perf_counter() - t0:6.0f}s] delay {r['delay']:>3} {r['config']:<38} seed {r['seed']} "
                    f"early {r['early_loss_bits']:.3f} final {r['final_loss_bits']:.3f} bits ({r['seconds']:.0f}s)",
                    file=sys.stderr, flush=True,
                )
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    seconds = time.perf_counter() - t0
    order = {j.key: i for i, j in enumerate(jobs)}
    results.sort(key=lambda r: order[r["job"].key])  # the plan's order, however the runs finished
    rows = [r["row"] for r in results]
    np.savez_compressed(
        out / "curves.npz",
        **{f"{r['row']['config']}|d{r['row']['delay']}|s{r['row']['seed']}|{part}": r[part] for r in results for part in ("online", "remember")},
    )
    (out / "wall.json").write_text(json.dumps({"wall_seconds": seconds, "workers": workers}))
    found = write_tables(out, rows, budget, seconds)
    fig = plot(out, rows, budget)
    return {"summary": summarize(rows), "findings": found, "seconds": seconds, "paths": {
        "runs": str(out / "runs.csv"), "summary_md": str(out / "summary.md"), "summary_csv": str(out / "summary.csv"),
        "figure": str(fig), "curves": str(out / "curves.npz")}}


_INT_FIELDS = ("delay", "state_size", "neurons", "seed", "meta_parameters", "network_parameters")


def report_fig1(out_dir: str | os.PathLike) -> list[str]:
    """Rewrite the tables and the figure of a finished run folder from its runs.csv (no training)."""
    out = Path(out_dir)
    cfg = json.loads((out / "config.json").read_text())["budget"]
    budget = Budget(**{k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v for k, v in cfg.items()})
    with open(out / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k in _INT_FIELDS:
                r[k] = int(v)
            elif k.endswith("_bits") or k == "seconds":
                r[k] = float(v)
    wall = out / "wall.json"
    seconds = json.loads(wall.read_text())["wall_seconds"] if wall.exists() else math.nan
    found = write_tables(out, rows, budget, seconds)
    plot(out, rows, budget)
    return found


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Gregor (2020) Figure 1 at CPU scale: OP_h x OP_w, delays, state sizes, LSTMs.")
    ap.add_argument("--out", default=None, help="output folder (default runs/gregor_fig1_<budget>)")
    ap.add_argument("--quick", action="store_true", help="the ~10-minute budget (same as --budget quick)")
    ap.add_argument("--budget", choices=sorted(BUDGETS), default=None, help="quick (default), small or full")
    ap.add_argument("--workers", type=int, default=2, help="parallel processes, one torch thread each (default 2)")
    ap.add_argument("--report-only", action="store_true", help="rewrite tables and figure of --out from its runs.csv")
    args = ap.parse_args(argv)
    if args.report_only:
        if not args.out:
            ap.error("--report-only needs --out (a finished run folder).")
        report_fig1(args.out)
        print((Path(args.out) / "summary.md").read_text())
        return
    name = "quick" if args.quick or args.budget is None else args.budget
    if args.quick and args.budget not in (None, "quick"):
        ap.error("--quick and --budget disagree; give one of them.")
    out = args.out or f"runs/gregor_fig1_{name}"
    try:
        res = run_fig1(out, name, workers=args.workers)
    except ValueError as err:
        ap.error(str(err))
    print((Path(out) / "summary.md").read_text())
    print(f"wrote {', '.join(res['paths'].values())}")


if __name__ == "__main__":
    main()

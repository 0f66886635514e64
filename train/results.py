"""Per-step results of comparison runs: storage, metrics, tables, plots, TensorBoard.

A *cell* is one (agent, env, seed) with its per-step records [T, B] over B lifetimes. Cells are
stored one ``.npz`` per cell under ``<run>/cells/`` (columns: correct, loss_mask, loss, plus
the labels), written atomically, so a run can be resumed and several runs can be merged by
``rulegym report``. Every number in a table is recomputed from these files.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

METRIC_DOC = {
    "acc_all": "online accuracy over the whole lifetime",
    "acc_at_{k}": "accuracy on the k-th example",
    "acc_first_{k}": "cumulative accuracy over the first k examples",
    "acc_last_10pct": "accuracy over the last 10% of the lifetime",
    "loss_all": "mean cross-entropy of the scored predictions (nats)",
    "bits_all": "the same in bits (bits per character on a character stream)",
}


def _safe(text: str) -> str:
    """``text`` as part of a file name: letters, digits and ``_.+-`` kept, anything else (and a
    leading dot, which would hide the file) becomes ``_``."""
    return re.sub(r"^\.|[^A-Za-z0-9_.+-]", "_", text)


#: a cell file's name; anything else under ``cells/`` (e.g. the hidden temporary file of a write
#: that was interrupted) is not a cell
CELL_NAME = re.compile(r"[^.].*__.+__s\d+\.npz")


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (a crash never leaves a half-written file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def cell_stem(agent: str, env: str) -> str:
    """The file name the cells of (agent, env) share, up to the seed: two pairs with the same
    stem would overwrite each other's cells."""
    return f"{_safe(agent)}__{_safe(env)}"


def cell_path(run_dir: Path, agent: str, env: str, seed: int) -> Path:
    return Path(run_dir) / "cells" / f"{cell_stem(agent, env)}__s{seed}.npz"


def save_cell(run_dir: Path, agent: str, env: str, seed: int, *, correct, loss_mask, loss) -> Path:
    """Write one cell atomically."""
    path = cell_path(run_dir, agent, env, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(
        tmp, correct=np.asarray(correct, bool), loss_mask=np.asarray(loss_mask, bool), loss=np.asarray(loss, np.float32),
        agent=np.array(agent), env=np.array(env), seed=np.array(seed),
    )
    os.replace(tmp, path)
    return path


@dataclass
class Cell:
    """The records of one (agent, env, seed) cell: arrays are [steps, lifetimes]."""

    agent: str
    env: str
    seed: int
    correct: np.ndarray
    loss_mask: np.ndarray
    loss: np.ndarray
    run: str

    def curve(self) -> np.ndarray:
        """Online accuracy per step over this cell's lifetimes (NaN where no step counts)."""
        counted = self.loss_mask.sum(axis=1)
        hits = (self.correct & self.loss_mask).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counted > 0, hits / np.maximum(counted, 1), np.nan)


def load_runs(run_dirs: Iterable[Path]) -> list[Cell]:
    """Every cell of the given run folders (a folder given twice counts once); agents that occur
    in several runs get the run's folder name as a prefix so merged reports keep them apart.
    Two cells of the same (agent, env, seed) after that -- folders with the same name holding
    the same cell -- are an error, never extra seeds."""
    runs = {Path(run).resolve(): Path(run) for run in run_dirs}
    loaded: list[tuple[Cell, Path, Path]] = []  # each cell with its run folder (resolved) and file
    for resolved, run in runs.items():
        folder = run / "cells"
        if not folder.is_dir():
            raise FileNotFoundError(f"{run} is not a rulegym run folder (no cells/ inside); pass folders written by `rulegym compare`.")
        for path in sorted(p for p in folder.glob("*.npz") if CELL_NAME.fullmatch(p.name)):
            try:
                with np.load(path) as z:
                    cell = Cell(str(z["agent"]), str(z["env"]), int(z["seed"]), z["correct"], z["loss_mask"], z["loss"], resolved.name)
            except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, zlib.error) as err:
                raise ValueError(
                    f"cell file {path} is unreadable ({type(err).__name__}: {err}), e.g. cut short by an interrupted run; "
                    "delete it and run the same comparison again (resume) to redo that cell."
                ) from err
            loaded.append((cell, resolved, path))
    runs_of: dict[str, set[Path]] = {}
    for c, resolved, _ in loaded:
        runs_of.setdefault(c.agent, set()).add(resolved)
    for c, _, _ in loaded:
        if len(runs_of[c.agent]) > 1:
            c.agent = f"{c.run}/{c.agent}"
    first: dict[tuple[str, str, int], Path] = {}
    for c, _, path in loaded:
        other = first.setdefault((c.agent, c.env, c.seed), path)
        if other != path:
            raise ValueError(
                f"{other} and {path} hold the same cell (agent {c.agent!r}, env {c.env!r}, seed {c.seed}) in run folders "
                "of the same name, which a report cannot keep apart; rename one of the folders (or report them separately)."
            )
    return [c for c, _, _ in loaded]


def cell_metrics(cell: Cell, ks: Sequence[int]) -> dict[str, float]:
    """Online accuracy metrics of one cell (masked steps only)."""
    steps = cell.correct.shape[0]
    hits = (cell.correct & cell.loss_mask).astype(np.float64)
    counted = cell.loss_mask.astype(np.float64)

    def mean_over(sl: slice) -> float:
        n = counted[sl].sum()
        return float(hits[sl].sum() / n) if n else math.nan

    out = {"acc_all": mean_over(slice(None))}
    for k in ks:
        if k <= steps:
            out[f"acc_at_{k}"] = mean_over(slice(k - 1, k))
            out[f"acc_first_{k}"] = mean_over(slice(0, k))
    tail = max(1, steps // 10)
    out["acc_last_10pct"] = mean_over(slice(steps - tail, steps))
    out["loss_all"] = float((cell.loss * counted).sum() / counted.sum()) if counted.sum() else math.nan  # nothing scored: no loss
    out["bits_all"] = out["loss_all"] / math.log(2)
    return out


def interval95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval over seeds (NaN half-width for one seed)."""
    from scipy import stats

    values = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    mean = float(values.mean())
    if values.size < 2:
        return mean, math.nan
    return mean, float(stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))


def _ordered(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for i in items:
        seen.setdefault(i, None)
    return list(seen)


def summarize(cells: list[Cell], ks: Sequence[int]) -> list[dict[str, Any]]:
    """One row per (agent, env): every metric's mean and 95% interval over seeds."""
    rows = []
    for env in _ordered(c.env for c in cells):
        for agent in _ordered(c.agent for c in cells):
            group = [c for c in cells if c.agent == agent and c.env == env]
            if not group:
                continue
            per_seed = [cell_metrics(c, ks) for c in sorted(group, key=lambda c: c.seed)]
            row: dict[str, Any] = {"agent": agent, "env": env, "seeds": len(group), "lifetimes": int(group[0].correct.shape[1])}
            for name in _ordered(n for m in per_seed for n in m):
                mean, half = interval95([m.get(name, math.nan) for m in per_seed])
                row[name], row[name + "_ci95"] = mean, half
            rows.append(row)
    return rows


#: the keys of a summary row that name it rather than measure it
ROW_KEYS = ("agent", "env", "seeds", "lifetimes")


def metric_names(rows: list[dict[str, Any]]) -> list[str]:
    """The metrics of any row, in the order they first occur (rows of shorter lifetimes lack
    the metrics of the larger k)."""
    return _ordered(k for r in rows for k in r if k not in ROW_KEYS and not k.endswith("_ci95"))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, one column per metric of any row (blank where a row lacks it,
    "–" where it is NaN)."""
    metrics = metric_names(rows)
    lines = ["| agent | env | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for r in rows:
        cells = []
        for m in metrics:
            if m not in r:
                cells.append("")
                continue
            value, half = r[m], r.get(m + "_ci95", math.nan)
            cells.append("–" if math.isnan(value) else f"{value:.3f}" + ("" if math.isnan(half) else f" ± {half:.3f}"))
        lines.append(f"| {r['agent']} | {r['env']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict[str, Any]], out_dir: Path) -> None:
    """summary.csv (every number) and summary.md (mean ± 95% interval over seeds)."""
    keys = _ordered(k for r in rows for k in r)
    tmp = out_dir / f".summary.csv.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out_dir / "summary.csv")
    (out_dir / "summary.md").write_text(
        markdown_table(rows) + "\nOnline accuracy (prequential); mean ± 95% t-interval over seeds.\n"
    )


def _smooth(curve: np.ndarray, window: int) -> np.ndarray:
    if window <= 1:
        return curve
    valid = ~np.isnan(curve)
    kernel = np.ones(window)
    num = np.convolve(np.where(valid, curve, 0.0), kernel, mode="same")
    den = np.convolve(valid.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _save(fig, stem: Path) -> list[Path]:
    """Write a figure as PNG and SVG next to each other and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    paths = [stem.with_suffix(ext) for ext in (".png", ".svg")]
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths


@contextlib.contextmanager
def _unscored_steps_allowed():
    """Steps that no lifetime scores (Omniglot's support steps: loss_mask 0) are NaN in every
    curve; their mean is NaN (a gap in the plot), not a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def plot_curves(cells: list[Cell], stem: Path) -> list[Path]:
    """Online accuracy curves, one panel per env, all agents on a shared axis; mean and 95%
    interval over seeds (curves smoothed over a window of ~2% of the lifetime). PNG and SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    envs, agents = _ordered(c.env for c in cells), _ordered(c.agent for c in cells)
    fig, axes = plt.subplots(1, len(envs), figsize=(4.2 * len(envs), 3.4), squeeze=False, sharey=True)
    for ax, env in zip(axes[0], envs):
        for agent in agents:
            group = [c for c in cells if c.env == env and c.agent == agent]
            if not group:
                continue
            steps = min(c.correct.shape[0] for c in group)
            window = max(1, steps // 50)
            curves = np.stack([_smooth(c.curve()[:steps], window) for c in group])
            with _unscored_steps_allowed():
                mean = np.nanmean(curves, axis=0)
                half = stats.t.ppf(0.975, len(group) - 1) * np.nanstd(curves, axis=0, ddof=1) / math.sqrt(len(group)) if len(group) > 1 else None
            x = np.arange(1, steps + 1)
            (line,) = ax.plot(x, mean, label=agent, lw=1.4)
            if half is not None:
                ax.fill_between(x, np.clip(mean - half, 0, 1), np.clip(mean + half, 0, 1), color=line.get_color(), alpha=0.2, lw=0)
        ax.set_title(env)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("examples seen")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("online accuracy")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    return _save(fig, stem)


def plot_heatmap(rows: list[dict[str, Any]], metric: str, stem: Path) -> list[Path]:
    """Agents x envs heat map of one metric (the meta-train x meta-test grid view)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agents, envs = _ordered(r["agent"] for r in rows), _ordered(r["env"] for r in rows)
    grid = np.full((len(agents), len(envs)), np.nan)
    for r in rows:
        grid[agents.index(r["agent"]), envs.index(r["env"])] = r.get(metric, np.nan)
    fig, ax = plt.subplots(figsize=(1.3 * len(envs) + 2.5, 0.5 * len(agents) + 1.6))
    im = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(envs)), envs, rotation=30, ha="right")
    ax.set_yticks(range(len(agents)), agents)
    for i in range(len(agents)):
        for j in range(len(envs)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w" if grid[i, j] < 0.6 else "k", fontsize=8)
    ax.set_title(metric)
    fig.colorbar(im, ax=ax)
    return _save(fig, stem)


def write_tensorboard(cells: list[Cell], logdir: Path) -> None:
    """Online accuracy curves (mean over lifetimes and seeds): one run per agent, one tag per env."""
    from torch.utils.tensorboard import SummaryWriter

    for agent in _ordered(c.agent for c in cells):
        # written whole from the cells each time: earlier event files (a resumed or re-run
        # comparison) would show every step twice
        for old in (logdir / _safe(agent)).glob("events.out.tfevents.*"):
            old.unlink()
        writer = SummaryWriter(log_dir=str(logdir / _safe(agent)))
        for env in _ordered(c.env for c in cells):
            group = [c for c in cells if c.agent == agent and c.env == env]
            if not group:
                continue
            steps = min(c.correct.shape[0] for c in group)
            with _unscored_steps_allowed():
                curve = np.nanmean(np.stack([c.curve()[:steps] for c in group]), axis=0)
            for t, value in enumerate(curve):
                if not math.isnan(value):
                    writer.add_scalar(f"online_accuracy/{env}", float(value), global_step=t + 1)
        writer.close()


def report(run_dirs: Sequence[Path], out_dir: Path, ks: Sequence[int] = (10, 100), heatmap_metric: str | None = None) -> list[dict[str, Any]]:
    """Tables and figures from one or more run folders, merged."""
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, int) or k < 1]
    if bad:
        raise ValueError(f"ks must be step counts >= 1 (accuracy at and over the first k examples), got {list(ks)}.")
    cells = load_runs(run_dirs)
    if not cells:
        raise ValueError(f"no finished cells in {', '.join(map(str, run_dirs))}.")
    rows = summarize(cells, ks)
    # the heat map's metric is settled before anything is written
    steps = min(c.correct.shape[0] for c in cells)
    fitting = [k for k in ks if k <= steps]
    metric = heatmap_metric or (f"acc_first_{max(fitting)}" if fitting else "acc_all")
    if metric not in metric_names(rows):
        raise ValueError(
            f"heat map metric {metric!r} is in no row (the shortest lifetime has {steps} steps); "
            f"pick one of {', '.join(metric_names(rows))} with --metric, or k of at most {steps} with --ks."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tables(rows, out_dir)
    plot_curves(cells, out_dir / "curves")
    plot_heatmap(rows, metric, out_dir / "heatmap")
    return rows

"""What a meta-training run reports: TensorBoard scalars, the config, and a progress bar.

Only the main rank logs. Scalars (tag groups in TensorBoard):

* ``meta/loss``, ``meta/train_accuracy``, ``meta/grad_norm``, ``meta/skipped_updates``
* ``es/fitness_mean``, ``es/fitness_std``, ``es/fitness_max``, ``es/fitness_min``,
  ``es/fitness_spread`` (max - min), ``es/nonfinite_members``
* ``meta_test/<task>/accuracy`` and ``meta_test/<task>/loss`` (held-out lifetimes)
* ``speed/lifetimes_per_s``, ``speed/iteration_s``

The config is written as text and as TensorBoard hparams. A resumed run opens its writer with
``purge_step`` so events logged after the checkpoint by the killed process are discarded (a run
started again from iteration 0 discards every earlier event).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping

__all__ = ["ProgressBar", "RunLogger", "metric_tag"]

_TAGS = {
    "meta_loss": "meta/loss",
    "meta_train_accuracy": "meta/train_accuracy",
    "grad_norm": "meta/grad_norm",
    "skipped_updates": "meta/skipped_updates",
    "lifetimes_per_s": "speed/lifetimes_per_s",
    "iteration_s": "speed/iteration_s",
}


def metric_tag(key: str) -> str | None:
    """TensorBoard tag of a log key (None: not a scalar to plot)."""
    if key in _TAGS:
        return _TAGS[key]
    if key.startswith("fitness_") or key == "nonfinite_members":
        return f"es/{key}"
    if key.startswith("meta_test/"):
        return key
    return None


def _hparam_value(v: Any) -> Any:
    if isinstance(v, bool) or isinstance(v, (int, float, str)):
        return v
    if v is None:
        return "None"
    return json.dumps(v, sort_keys=True)


class ProgressBar:
    """A progress bar with ETA on stderr: tqdm when installed, else a small built-in one."""

    def __init__(self, total: int, initial: int = 0, desc: str = "meta-train", enabled: bool = True):
        self.total, self.n, self.desc, self.enabled = total, initial, desc, enabled
        self._tqdm = None
        self._start = time.monotonic()
        self._start_n = initial
        self._last_print = 0.0
        if not enabled:
            return
        try:
            from tqdm import tqdm

            self._tqdm = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr)
        except ImportError:
            self._tty = sys.stderr.isatty()

    def update(self, n: int = 1, postfix: Mapping[str, float] | None = None) -> None:
        self.n += n
        if not self.enabled:
            return
        text = ", ".join(f"{k}={v:.4g}" for k, v in (postfix or {}).items() if isinstance(v, (int, float)) and math.isfinite(v))
        if self._tqdm is not None:
            if text:
                self._tqdm.set_postfix_str(text, refresh=False)
            self._tqdm.update(n)
            return
        now = time.monotonic()
        if not self._tty and now - self._last_print < 10.0 and self.n < self.total:
            return
        self._last_print = now
        done = self.n - self._start_n
        rate = done / max(now - self._start, 1e-9)
        eta = (self.total - self.n) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * self.n / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        line = f"{self.desc} [{bar}] {self.n}/{self.total} ETA {eta_s} {text}"
        if self._tty:
            sys.stderr.write("\r" + line[:200])
            if self.n >= self.total:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None


class RunLogger:
    """TensorBoard events under ``run_dir/tensorboard`` plus the progress bar (main rank only)."""

    def __init__(
        self,
        run_dir: str | Path,
        config: Mapping[str, Any],
        *,
        enabled: bool,
        tensorboard: bool,
        progress: bool,
        total: int,
        start_step: int,
        log_every: int = 1,
    ):
        self.enabled = enabled
        self.log_every = log_every
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams

            # events a killed process logged after the checkpoint (or, starting from iteration 0,
            # any at all) are discarded, so a restarted run never shows a step twice
            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1 if start_step else 0)
            text = json.dumps(dict(config), indent=2, sort_keys=True)
            self.writer.add_text("config", "```\n" + text + "\n```", global_step=start_step)
            flat = {k: _hparam_value(v) for k, v in config.items()}
            metrics = {"meta/loss": math.nan, "meta/train_accuracy": math.nan}
            exp, ssi, sei = hparams(flat, metrics)
            fw = self.writer._get_file_writer()
            for summary in (exp, ssi, sei):
                fw.add_summary(summary)
        self.bar = ProgressBar(total, initial=start_step, enabled=enabled and progress)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            for key, value in metrics.items():
                tag = metric_tag(key)
                if tag is None or not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                if step % self.log_every == 0 or key.startswith("meta_test/"):
                    self.writer.add_scalar(tag, float(value), global_step=step)
        postfix = {k: metrics[k] for k in ("meta_loss", "meta_train_accuracy") if k in metrics}
        self.bar.update(1, postfix)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

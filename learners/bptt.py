"""Meta-training by backpropagation through lifetimes (truncated, optionally checkpointed).

One iteration: draw a task from the mixture, run ``batch_size`` fresh lifetimes of it in one
vector env, and take one Adam step on the gradient of the meta-objective

    J = sum over steps and lifetimes of masked loss / number of counted steps

i.e. the mean masked online loss over the whole lifetime. With ``truncation = K`` the lifetime
runs in windows of K steps: each window's masked loss *sum* is backpropagated, the state is
detached, and the next window continues from it; the gradients of all windows are summed and
divided by the total count at the end (the count is only known then, and division commutes
with the sum). With ``activation_checkpoint_steps = S`` each window is further cut into
segments whose activations are recomputed during backward, so memory is bounded for long
windows.

Under ``torchrun`` rank r runs lifetimes [lo, hi) of the batch with the same env seeds and
initial-state rows as the single-process run; gradient sums, loss sums and counts travel in
one all-reduce, so the update equals the single-process one.

A NaN/inf anywhere (non-finite logits, loss or gradient, on any rank) skips the update: the
meta-parameters and Adam's moments stay untouched, ``skipped_updates`` counts it and the
iteration's metrics say ``update_skipped = 1``.
"""

from __future__ import annotations

import math
import time
import warnings

import torch

from rulegym.learners.base import Learner
from rulegym.learners.config import BPTTConfig
from rulegym.learners.distributed import shard
from rulegym.learners.rollout import FiniteGuard, NonFiniteOutput, WindowStats, checkpointed_window
from rulegym.learners.tasks import lifetime_seeds
from rulegym.train.loop import rollout

__all__ = ["BPTTLearner"]


class BPTTLearner(Learner):
    """Truncated BPTT with Adam, gradient clipping and optional activation checkpointing."""

    name = "bptt"

    def __init__(self, config: BPTTConfig, dist=None, device=None):
        if not isinstance(config, BPTTConfig):
            raise TypeError(f"BPTTLearner needs a BPTTConfig, got {type(config).__name__}.")
        super().__init__(config, dist, device)
        if config.batch_size < self.dist.world_size:
            raise ValueError(f"batch_size={config.batch_size} is smaller than the {self.dist.world_size} processes; every rank needs lifetimes.")
        self.guard = FiniteGuard(self.agent)

    def run_batch(self) -> tuple[WindowStats, bool]:
        """Forward and backward over this rank's lifetimes; gradients (sums) land in ``.grad``."""
        cfg = self.config
        idx = self.mixture.choose(self.step)
        steps = self.mixture.lifetime_steps(idx)
        B = cfg.batch_size
        lo, hi = shard(B, self.dist.rank, self.dist.world_size)
        venv = self.mixture.env(idx, hi - lo)
        init_gen = torch.Generator().manual_seed(self.draw_seed())
        stats = WindowStats()
        window = cfg.truncation or steps
        try:
            obs, _ = venv.reset(seed=lifetime_seeds(self.seed_base, self.data_position, range(lo, hi)))
            with torch.enable_grad():  # a learned initial state gets its gradient too
                full = self.agent.initial_state(B, init_gen)
            state = {k: v[lo:hi].to(self.device) for k, v in full.items()}
            t = 0
            while t < steps:
                n = min(window, steps - t)
                if cfg.activation_checkpoint_steps:
                    total, state, obs, win = checkpointed_window(
                        self.guard, venv, obs, state, n, cfg.activation_checkpoint_steps, self.device
                    )
                    stats.loss_sum += win.loss_sum
                    stats.correct += win.correct
                    stats.count += win.count
                else:
                    res = rollout(self.guard, venv, obs, state, n, grad=True, device=self.device)
                    mask = res.loss_mask.to(res.loss.device, res.loss.dtype)
                    total = (res.loss * mask).sum()
                    stats.add(res.loss, res.correct, res.loss_mask)
                    state, obs = res.state, res.obs
                if total.requires_grad:
                    total.backward()
                state = {k: v.detach() for k, v in state.items()}
                t += n
            return stats, False
        except NonFiniteOutput:
            return stats, True

    def train_step(self) -> dict[str, float]:
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        stats, bad = self.run_batch()
        self.data_position += self.config.batch_size
        grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params])
        sums = torch.tensor([stats.loss_sum, stats.correct, stats.count, float(bad)], dtype=torch.float64)
        if self.dist.enabled:  # one flat buffer for the gradient, one small one for the statistics
            grads = self.dist.all_reduce_sum(grads)
            sums = self.dist.all_reduce_sum(sums)
        loss_sum, correct, count, bad_ranks = sums.tolist()
        grads = grads / max(count, 1.0)
        meta_loss = loss_sum / count if count else math.nan
        grad_norm = float(grads.norm())
        ok = bad_ranks == 0 and count > 0 and math.isfinite(meta_loss) and math.isfinite(grad_norm)
        if ok:
            self.apply_update(grads)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_updates += 1
            if self.dist.is_main:
                why = "non-finite logits" if bad_ranks else ("no counted step" if not count else "non-finite loss/gradient")
                warnings.warn(f"iteration {self.step + 1}: update skipped ({why}); {self.skipped_updates} skipped so far.", RuntimeWarning, stacklevel=2)
        self.step += 1
        elapsed = time.perf_counter() - start
        return {
            "step": self.step,
            "meta_loss": meta_loss,
            "meta_train_accuracy": correct / count if count else math.nan,
            "grad_norm": grad_norm,
            "update_skipped": 0 if ok else 1,
            "skipped_updates": self.skipped_updates,
            "lifetimes_per_s": self.config.batch_size / elapsed,
            "iteration_s": elapsed,
        }

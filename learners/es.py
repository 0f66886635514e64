"""Meta-training by OpenAI-ES (Salimans et al. 2017): antithetic pairs, shared seeds, Adam.

One iteration draws a task and an iteration seed. Pair ``k`` of the population gets the noise
``eps_k ~ N(0, I)`` (a generator seeded from (iteration seed, k)); its members are
``theta + sigma * eps_k`` and ``theta - sigma * eps_k``. Both members of a pair see the same
lifetimes (env seeds) and the same initial state, so their fitness difference measures the
perturbation, not the data. Fitness is ``-mean masked loss`` (or the online accuracy) over the
member's ``batch_size`` lifetimes; with rank shaping it is replaced by centred ranks in
[-0.5, 0.5]. The gradient estimate

    g = 1 / (P * sigma) * sum_k (f_k+ - f_k-) * eps_k

is handed to Adam as the gradient of a loss to minimise (``-g``; Adam's ``weight_decay`` adds
the L2 term), so the same optimiser machinery as BPTT keeps the state that checkpoints hold.

The population is evaluated as one vmapped batch (``population_step``) in chunks of
``members_per_chunk`` members to bound memory. Under ``torchrun`` each rank evaluates a slice
of the population; only the per-member statistics are all-gathered, and every rank rebuilds
all noise from the shared seeds to apply the identical update: noise is never communicated.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch
from torch import Tensor

from rulegym.learners.base import Learner, derive_seed
from rulegym.learners.config import ESConfig
from rulegym.learners.distributed import shard
from rulegym.learners.rollout import InitialStateCall, population_rollout

__all__ = ["ESLearner", "centered_ranks"]

_NOISE_TAG, _INIT_TAG = 1, 2


def centered_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks mapped linearly to [-0.5, 0.5]; tied values share their mean rank, so an
    antithetic pair of equal fitness (common with ``fitness="accuracy"``) adds nothing to the
    gradient instead of a step in the direction its position in the population picks."""
    from scipy.stats import rankdata

    n = len(values)
    ranks = rankdata(np.asarray(values, dtype=np.float64), method="average") - 1.0
    return ranks / max(n - 1, 1) - 0.5


class ESLearner(Learner):
    """OpenAI-ES with antithetic sampling, optional rank shaping and Adam."""

    name = "es"

    def __init__(self, config: ESConfig, dist=None, device=None):
        if not isinstance(config, ESConfig):
            raise TypeError(f"ESLearner needs an ESConfig, got {type(config).__name__}.")
        super().__init__(config, dist, device)
        self.names = [n for n, p in self.agent.named_parameters() if p.requires_grad]
        self.shapes = [p.shape for p in self.params]
        self.dim = self.num_meta_params
        self._init_call = InitialStateCall(self.agent)
        with torch.enable_grad():
            probe = self.agent.initial_state(1, torch.Generator().manual_seed(0))
        #: agents with a learned initial state build it from each member's own parameters
        self.init_depends_on_params = any(v.requires_grad for v in probe.values())
        self.last_fitness: np.ndarray | None = None
        self.last_gradient: Tensor | None = None

    # ------------------------------------------------------------------ noise and members
    def noise(self, iteration_seed: int, pair: int) -> Tensor:
        """eps_pair of this iteration, rebuilt from the shared seed (never communicated)."""
        g = torch.Generator().manual_seed(derive_seed(iteration_seed, pair, _NOISE_TAG))
        return torch.randn(self.dim, generator=g).to(self.device)

    def _unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """[P, D] member vectors -> {name: [P, *shape]}."""
        out, offset = {}, 0
        for name, shape in zip(self.names, self.shapes):
            n = int(np.prod(shape)) if len(shape) else 1
            out[name] = flat[:, offset : offset + n].reshape(flat.shape[0], *shape)
            offset += n
        return out

    def _initial_states(self, params: dict[str, Tensor], members: np.ndarray, iteration_seed: int, lifetimes: int):
        """State [P, B, ...] for ``members``; both members of a pair draw the same randomness."""
        pairs = members // 2
        per_member = []
        cache: dict[int, dict[str, Tensor]] = {}
        with torch.no_grad():
            for j, (m, k) in enumerate(zip(members, pairs)):
                gen = torch.Generator().manual_seed(derive_seed(iteration_seed, int(k), _INIT_TAG))
                if self.init_depends_on_params:
                    p = {f"agent.{n}": params[n][j] for n in self.names}
                    s = torch.func.functional_call(self._init_call, p, (lifetimes, gen))
                else:
                    if int(k) not in cache:
                        cache[int(k)] = self.agent.initial_state(lifetimes, gen)
                    s = cache[int(k)]
                per_member.append(s)
        return {key: torch.stack([s[key] for s in per_member]).to(self.device) for key in per_member[0]}

    def evaluate_members(self, members: np.ndarray, task: int, iteration_seed: int, theta: Tensor) -> np.ndarray:
        """Per-member [loss_sum, correct, count, nonfinite] (float64 [len(members), 4])."""
        cfg = self.config
        B = cfg.batch_size
        steps = self.mixture.lifetime_steps(task)
        pairs = members // 2
        signs = torch.tensor(np.where(members % 2 == 0, 1.0, -1.0), dtype=theta.dtype, device=self.device)
        eps: dict[int, Tensor] = {}
        for k in np.unique(pairs):
            eps[int(k)] = self.noise(iteration_seed, int(k))
        flat = theta[None, :] + cfg.sigma * signs[:, None] * torch.stack([eps[int(k)] for k in pairs])
        params = self._unflatten(flat)
        if cfg.common_data:  # every pair on the same lifetimes
            streams = np.array([0])
            rows = np.zeros(len(members), dtype=np.int64)
        else:
            streams, rows = np.unique(pairs, return_inverse=True)
        venv = self.mixture.env(task, len(streams) * B)
        seeds = [self.seed_base + self.data_position + int(s) * B + j for s in streams for j in range(B)]
        obs, _ = venv.reset(seed=seeds)
        state = self._initial_states(params, members, iteration_seed, B)
        out = population_rollout(self.agent, venv, params, state, rows, B, steps, self.device, obs)
        return np.stack([out["loss_sum"], out["correct"], out["count"], out["nonfinite"].astype(np.float64)], axis=1)

    # ------------------------------------------------------------------ one iteration
    def train_step(self) -> dict[str, float]:
        cfg = self.config
        start = time.perf_counter()
        P, n_pairs = cfg.population, cfg.population // 2
        task = self.mixture.choose(self.step)
        iteration_seed = self.draw_seed()
        theta = self.flat_params()
        counts = [shard(P, r, self.dist.world_size) for r in range(self.dist.world_size)]
        lo, hi = counts[self.dist.rank]
        chunk = cfg.members_per_chunk or max(hi - lo, 1)
        local = [self.evaluate_members(np.arange(c0, min(c0 + chunk, hi)), task, iteration_seed, theta) for c0 in range(lo, hi, chunk)]
        local_t = torch.from_numpy(np.concatenate(local) if local else np.zeros((0, 4)))
        stats = self.dist.all_gather_rows(local_t, [h - l for l, h in counts]).numpy()
        self.data_position += (1 if cfg.common_data else n_pairs) * cfg.batch_size

        loss_sum, correct, count, nonfinite = stats[:, 0], stats[:, 1], stats[:, 2], stats[:, 3] > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            loss = np.where(count > 0, loss_sum / np.maximum(count, 1), np.nan)
            acc = np.where(count > 0, correct / np.maximum(count, 1), np.nan)
        fitness = -loss if cfg.fitness == "loss" else acc.copy()
        bad = nonfinite | ~np.isfinite(fitness)
        n_bad = int(bad.sum())
        skip_reason = None
        if n_bad:
            if cfg.nonfinite_fitness == "skip" or n_bad == P:
                skip_reason = f"{n_bad} of {P} members had non-finite outputs or fitness"
            else:
                fitness = np.where(bad, np.min(fitness[~bad]), fitness)
        metrics: dict[str, float] = {"step": self.step + 1}
        good = fitness[~bad] if n_bad < P else np.array([math.nan])
        metrics.update(
            meta_loss=float(np.nanmean(loss[~bad])) if n_bad < P else math.nan,
            meta_train_accuracy=float(np.nanmean(acc[~bad])) if n_bad < P else math.nan,
            fitness_mean=float(good.mean()),
            fitness_std=float(good.std()),
            fitness_max=float(good.max()),
            fitness_min=float(good.min()),
            fitness_spread=float(good.max() - good.min()),
            nonfinite_members=n_bad,
        )
        grad_norm = math.nan
        #: this iteration's per-member fitness (NaN-replaced) and ES gradient, for inspection
        self.last_fitness, self.last_gradient = fitness, None
        if skip_reason is None:
            shaped = centered_ranks(fitness) if cfg.rank_shaping else fitness
            weights = shaped[0::2] - shaped[1::2]  # f_k+ - f_k- per pair
            g = torch.zeros(self.dim, dtype=theta.dtype, device=self.device)
            for k in range(n_pairs):
                if weights[k] != 0.0:
                    g.add_(self.noise(iteration_seed, k), alpha=float(weights[k]))
            g /= P * cfg.sigma
            grad = -g  # Adam minimises; ES ascends the fitness
            self.last_gradient = g
            if torch.isfinite(grad).all():
                grad_norm = self.apply_update(grad)
            else:
                skip_reason = "non-finite ES gradient"
        if skip_reason is not None:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_updates += 1
            if self.dist.is_main:
                warnings.warn(f"iteration {self.step + 1}: update skipped ({skip_reason}); {self.skipped_updates} skipped so far.", RuntimeWarning, stacklevel=2)
        self.step += 1
        elapsed = time.perf_counter() - start
        metrics.update(
            grad_norm=grad_norm,
            update_skipped=0 if skip_reason is None else 1,
            skipped_updates=self.skipped_updates,
            lifetimes_per_s=P * cfg.batch_size / elapsed,
            iteration_s=elapsed,
        )
        return metrics

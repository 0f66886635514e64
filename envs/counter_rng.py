"""Counter-based random numbers, vectorised over lifetimes.

Tasks that need fresh noise at every step (Sum Sign) cannot store a whole lifetime of inputs
per lifetime (256 lifetimes x 2,000 steps x 784 inputs is 1.6 GB), and cannot call one
generator per lifetime per step without a Python loop on the hot path. Instead each lifetime
draws one 64-bit key at reset, and the numbers of step t are a hash of (key, t, position):
the same for a lifetime whether it runs alone or in a batch, and computed for the whole batch
in a few array operations. The hash is SplitMix64's finaliser, which passes BigCrush as a
counter-mode generator.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def uniform(keys: np.ndarray, t: np.ndarray, n: int) -> np.ndarray:
    """float64 [B, n] uniform in (0, 1): numbers 0..n-1 of step ``t[b]`` of lifetime ``keys[b]``."""
    keys = np.asarray(keys, dtype=np.uint64)
    counter = np.asarray(t, dtype=np.uint64)[:, None] * np.uint64(n) + np.arange(n, dtype=np.uint64)[None, :]
    bits = _mix(_mix(keys[:, None] ^ _mix(counter * _GOLDEN + _GOLDEN)))
    # 53 random bits, shifted by half a unit so 0 and 1 never occur (safe for inverse CDFs)
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)

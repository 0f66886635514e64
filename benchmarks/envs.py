"""Env throughput: the native vector env against gymnasium's SyncVectorEnv over single envs.

Prints one JSON document: for each task (MNIST with and without random projection, the char
stream) and each number of envs (1, 64, 256), env-steps per second of both, their ratio and
the wall time of one batched step. Needs RULEGYM_DATA (MNIST and the Wizard of Oz text);
without it, falls back to the embedded digits task and says so.

    RULEGYM_DATA=../shared/data python benchmarks/envs.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import gymnasium as gym
import numpy as np

import rulegym.envs  # noqa: F401  (registers the ids)


def steps_per_second(env, actions: list[np.ndarray], min_seconds: float) -> tuple[float, float]:
    """Env-steps/s and seconds per batched step, timed over repeated passes of ``actions``."""
    env.reset(seed=0)
    env.step(actions[0])  # warm-up: first-touch of buffers
    done, start = 0, time.perf_counter()
    while True:
        for a in actions:
            env.step(a)
        done += len(actions)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
    per_step = elapsed / done
    return env.num_envs / per_step, per_step


def bench(env_id: str, options: dict, num_envs: int, steps: int, min_seconds: float) -> dict:
    rng = np.random.default_rng(0)
    native = gym.make_vec(env_id, num_envs=num_envs, **options)
    actions = [rng.normal(size=native.action_space.shape).astype(np.float32) for _ in range(steps)]
    native_sps, native_step = steps_per_second(native, actions, min_seconds)
    native.close()
    sync = gym.vector.SyncVectorEnv([lambda: gym.make(env_id, **options) for _ in range(num_envs)])
    sync_sps, sync_step = steps_per_second(sync, actions, min_seconds)
    sync.close()
    return {
        "env_id": env_id,
        "options": options,
        "num_envs": num_envs,
        "native_env_steps_per_s": round(native_sps, 1),
        "sync_env_steps_per_s": round(sync_sps, 1),
        "speedup": round(native_sps / sync_sps, 2),
        "native_batched_step_ms": round(native_step * 1e3, 4),
        "sync_batched_step_ms": round(sync_step * 1e3, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter timing windows (noisier)")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 64, 256])
    args = parser.parse_args()
    min_seconds = 0.3 if args.quick else 1.5
    steps = 20 if args.quick else 50
    if os.environ.get("RULEGYM_DATA"):
        cases = [
            ("rulegym/MNIST-v0", {"lifetime_length": 1000}),
            ("rulegym/MNIST-v0", {"lifetime_length": 1000, "random_projection": True}),
            ("rulegym/WizardOfOz-v0", {"lifetime_length": 1000}),
        ]
        note = ""
    else:
        cases = [("rulegym/Digits-v0", {"lifetime_length": 1000}), ("rulegym/SumSign-v0", {"lifetime_length": 1000})]
        note = "RULEGYM_DATA unset: embedded tasks only"
    results = [bench(env_id, opts, n, steps, min_seconds) for env_id, opts in cases for n in args.num_envs]
    import torch

    print(
        json.dumps(
            {
                "benchmark": "envs",
                "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(), "numpy": np.__version__},
                "torch_threads": torch.get_num_threads(),
                "note": note,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

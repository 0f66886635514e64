"""Speed and memory of every registered agent in the lifetime loop; prints JSON.

For each agent (built with its defaults for the env's sizes) and each batch of 1 and 64
lifetimes, it times one lifetime of ``--steps`` steps through :func:`rulegym.train.loop.run_lifetime`:

* ``forward``: evaluation, under ``torch.no_grad()``;
* ``forward_backward``: with autograd, then ``result.mean_loss().backward()`` to every
  meta-parameter (BPTT through the whole lifetime; skipped for non-differentiable agents).

``examples_per_s`` = lifetimes x steps / wall time of the whole loop (env stepping included;
``env_only`` gives the env's own rate with constant logits, for reference).

Memory, on CPU: the peak resident set size *increase* during the measured run -- Linux's
``VmHWM`` (high-water RSS, reset through ``/proc/self/clear_refs`` right before the run) minus
``VmRSS`` at its start -- in a process forked for that one measurement, so allocations
retained by earlier runs cannot hide it. (``tracemalloc`` does not see torch's allocator.) On
CUDA: ``torch.cuda.max_memory_allocated`` over the run. A measurement that would exceed
``--mem-limit-gb`` fails cleanly (the child's ``RLIMIT_DATA``) and is reported as an error.

Each measurement has a time budget (``--budget-s``) and a memory cap: when the warm-up predicts
more time, or more than 70% of the cap, that measurement runs a shorter lifetime and reports
its ``steps``, so slow or memory-hungry agents cannot stall or crash the run. Threads default to 2 (CI's cores); on a busy machine ``--threads 1`` is steadier.

Usage: ``RULEGYM_DATA=../shared/data python benchmarks/agents.py [--quick]``. MNIST when its
files are found, else scikit-learn's digits (noted in the JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
import traceback
from typing import Any

import gymnasium as gym
import numpy as np

import rulegym.envs  # noqa: F401  (registers the env ids)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _rounded(value):
    """Floats to 4 significant digits, recursively, for a readable report; NaN and inf (e.g. the
    accuracy of steps that score nothing) become null, so the report stays valid JSON."""
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _pick_env(args) -> tuple[str, dict[str, Any], str | None]:
    """MNIST if it loads, else the embedded digits, with the reason."""
    if args.env:
        return args.env, {}, None
    try:
        gym.make_vec("rulegym/MNIST-v0", num_envs=1).close()
        return "rulegym/MNIST-v0", {}, None
    except Exception as exc:  # missing data root or files: fall back, and say why
        return "rulegym/Digits-v0", {}, f"MNIST unavailable ({type(exc).__name__}: {str(exc)[:160]}); used Digits"


def _measure(conn, agent_name: str, env_id: str, env_opts: dict, lifetimes: int, steps: int, mode: str, args) -> None:
    """One measurement, in a forked child: build, warm up, reset the peak, run, report."""
    try:
        import torch

        from rulegym.agents import make_agent
        from rulegym.train.loop import env_dims, run_lifetime

        torch.set_num_threads(args.threads)
        device = torch.device(args.device)
        limit = int(args.mem_limit_gb * 2**30)
        if device.type == "cpu" and limit > 0:
            used = _status_kb("VmData") * 1024
            resource.setrlimit(resource.RLIMIT_DATA, (used + limit, resource.RLIM_INFINITY))
        from rulegym.envs.registration import task_options

        # an episodic task (Omniglot) sets its own lifetime length: run at most one of its lifetimes
        takes_length = "lifetime_length" in task_options(env_id)
        env = gym.make_vec(env_id, num_envs=lifetimes, **({"lifetime_length": steps} if takes_length else {}), **env_opts)
        steps = min(steps, env.task.lifetime_length)
        if agent_name == "env_only":
            n_classes = env_dims(env)[1]
            zeros = np.zeros((lifetimes, n_classes), np.float32)
            env.reset(seed=0)
            rss0 = _status_kb("VmRSS")
            _reset_peak_rss()
            t0 = time.perf_counter()
            for _ in range(steps):
                env.step(zeros)
            wall = time.perf_counter() - t0
            conn.send({"examples_per_s": lifetimes * steps / wall, "peak_rss_delta_mb": (_status_kb("VmHWM") - rss0) / 1024})
            return
        torch.manual_seed(0)
        agent = make_agent(agent_name, *env_dims(env)).to(device)
        grad = mode == "forward_backward"
        if grad and (not agent.differentiable or not any(p.requires_grad for p in agent.parameters())):
            conn.send({"skipped": "not differentiable / no meta-parameters"})
            return

        def once(n):
            result = run_lifetime(agent, env, n, seed=0, grad=grad, device=device)
            if grad:
                result.mean_loss().backward()
                agent.zero_grad(set_to_none=True)
            return result

        warm = min(3, steps)
        rss_warm = _status_kb("VmRSS")
        _reset_peak_rss()
        t0 = time.perf_counter()
        once(warm)  # warm-up: lazy inits, allocator, first-call overheads
        per_step = (time.perf_counter() - t0) / warm  # an overestimate: it includes first calls
        if args.budget_s > 0 and per_step * steps > args.budget_s:
            # a slow agent gets a shorter lifetime (reported) rather than stalling the benchmark
            steps = min(steps, max(5, int(args.budget_s / per_step)))
        mem_per_step = (_status_kb("VmHWM") - rss_warm) * 1024 / warm
        if device.type == "cpu" and limit > 0 and mem_per_step * steps > 0.7 * limit:
            # BPTT memory grows with the lifetime: shorten it to fit the cap instead of failing
            steps = min(steps, max(5, int(0.7 * limit / max(mem_per_step, 1.0))))
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        rss0 = _status_kb("VmRSS")
        _reset_peak_rss()
        t0 = time.perf_counter()
        result = once(steps)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        out = {"examples_per_s": lifetimes * steps / wall, "seconds": wall, "steps": steps}
        if device.type == "cuda":
            out["peak_cuda_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            out["peak_rss_delta_mb"] = (_status_kb("VmHWM") - rss0) / 1024
        out["accuracy"] = result.accuracy()
        out["meta_parameters"] = sum(p.numel() for p in agent.parameters())
        conn.send(out)
    except MemoryError:
        conn.send({"error": f"out of memory (limit {args.mem_limit_gb} GiB)"})
    except RuntimeError as exc:
        msg = str(exc)
        if "alloc" in msg.lower() or "memory" in msg.lower():
            conn.send({"error": f"out of memory (limit {args.mem_limit_gb} GiB): {msg[:120]}"})
        else:
            conn.send({"error": traceback.format_exc(limit=3)[-600:]})
    except Exception:
        conn.send({"error": traceback.format_exc(limit=3)[-600:]})
    finally:
        conn.close()


def _run(ctx, *params) -> dict:
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_measure, args=(child, *params))
    proc.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:
        result = {"error": f"measurement process died (exit code {proc.exitcode}; killed for memory?)"}
    proc.join()
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20-step lifetimes: a smoke run in about a minute")
    parser.add_argument("--steps", type=int, default=None, help="steps per lifetime (default 100, 20 with --quick)")
    parser.add_argument("--lifetimes", default="1,64", help="comma-separated batch sizes (default 1,64)")
    parser.add_argument("--agents", default=None, help="comma-separated agent names (default: every registered agent)")
    parser.add_argument("--env", default=None, help="env id (default MNIST, else Digits)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2, as on CI)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--budget-s", type=float, default=None,
        help="time budget per measurement; slower agents run fewer steps, reported (default 30, 10 with --quick; 0: none)",
    )
    parser.add_argument("--mem-limit-gb", type=float, default=6.0, help="per-measurement memory cap (0: none)")
    args = parser.parse_args(argv)

    from rulegym.agents import AGENTS

    steps = args.steps or (20 if args.quick else 100)
    if args.budget_s is None:
        args.budget_s = 10.0 if args.quick else 30.0
    sizes = [int(v) for v in args.lifetimes.split(",")]
    names = args.agents.split(",") if args.agents else sorted(AGENTS)
    unknown = [n for n in names if n not in AGENTS]
    if unknown:
        parser.error(f"unknown agent(s) {unknown}; registered: {', '.join(sorted(AGENTS))}")
    env_id, env_opts, note = _pick_env(args)
    ctx = mp.get_context("fork")  # the parent never runs torch ops, so forking is safe and cheap
    import torch

    report: dict[str, Any] = {
        "benchmark": "agents",
        "env": env_id,
        "note": note,
        "steps": steps,
        "lifetimes": sizes,
        "threads": args.threads,
        "device": args.device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "examples_per_s": "lifetimes*steps / wall seconds of run_lifetime (env included)",
        "budget_s": args.budget_s,
        "budget_rule": (
            "a measurement whose warm-up predicts more than budget_s seconds, or more than 70% of mem_limit_gb, "
            "runs fewer steps (its 'steps')"
        ),
        "mem_limit_gb": args.mem_limit_gb,
        "memory_method": (
            "peak RSS increase during the run: VmHWM (reset via /proc/self/clear_refs) - VmRSS at start, "
            "in a fresh forked process per measurement" if args.device == "cpu" else "torch.cuda.max_memory_allocated"
        ),
        "env_only": {},
        "agents": {},
    }
    for b in sizes:
        report["env_only"][str(b)] = _run(ctx, "env_only", env_id, env_opts, b, steps, "forward", args)
    for name in names:
        entry: dict[str, Any] = {}
        for b in sizes:
            entry[str(b)] = {
                mode: _run(ctx, name, env_id, env_opts, b, steps, mode, args) for mode in ("forward", "forward_backward")
            }
        report["agents"][name] = entry
        print(f"[benchmark] {name} done", file=sys.stderr, flush=True)
    print(json.dumps(_rounded(report), indent=2, allow_nan=False))
    return report


if __name__ == "__main__":
    main()

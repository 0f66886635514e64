"""VSML speed: sub-LSTM ticks per second for a 784->10 VSML, forward and forward+backward.

A sub-LSTM tick is one update of one connection's LSTM; a step of 784->10 with 2 ticks is
2 * 7,840 ticks per lifetime. Each configuration runs in a fresh subprocess so its peak
resident memory (ru_maxrss) is its own. The timed region is whole agent steps (message
projections and validation included; the lifetime's initial state is drawn before it), run
``--repeats`` times: the JSON gives the best and the median repeat, since other tenants of a
shared machine slow single repeats by 10-20%. The same run measures this machine's dense
float32 matmul peak (best of its repeats too) and reports the achieved fraction of it,
counting 2*N*4N flops per tick (the recurrent gate product; everything else is overhead in
this accounting). ``--torch-only`` disables the native tick (``RULEGYM_NATIVE=0``).

    python benchmarks/vsml.py [--quick] [--threads 2] [--repeats 5] [--torch-only]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time


def matmul_peak_gflops(threads: int, size: int = 2048, seconds: float = 0.5, repeats: int = 5) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    best = 0.0
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            torch.matmul(a, b, out=out)
            n += 1
        best = max(best, 2 * size**3 * n / (time.perf_counter() - start) / 1e9)
    return best


def run_one(lifetimes: int, backward: bool, steps: int, threads: int, repeats: int) -> dict:
    import statistics

    import torch

    from rulegym.agents import make_agent, vsml_native

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    agent = make_agent("vsml", 784, 10)
    g = torch.Generator().manual_seed(0)
    obs = {
        "x": torch.randn(lifetimes, 784, generator=g),
        "y_prev": torch.zeros(lifetimes, 10),
        "err_prev": torch.zeros(lifetimes, 10),
    }
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def lifetime(n_steps: int) -> float:
        state = agent.initial_state(lifetimes, g)
        start = time.perf_counter()
        if backward:
            total = 0.0
            for _ in range(n_steps):
                logits, state = agent.step(obs, state)
                total = total + logits.square().mean()
            total.backward()
        else:
            with torch.no_grad():
                for _ in range(n_steps):
                    _, state = agent.step(obs, state)
        return time.perf_counter() - start

    lifetime(2)  # warm-up (and the native tick's build, if it is not cached yet)
    times = [lifetime(steps) for _ in range(repeats)]
    elapsed, median = min(times), statistics.median(times)
    ticks = lifetimes * 784 * 10 * agent.ticks * steps
    return {
        "lifetimes": lifetimes,
        "pass": "forward+backward" if backward else "forward",
        "native_tick": bool(vsml_native.available()) and not backward,
        "steps": steps,
        "repeats": repeats,
        "ms_per_step": round(elapsed / steps * 1e3, 3),
        "ms_per_step_median": round(median / steps * 1e3, 3),
        "sub_lstm_ticks_per_s": round(ticks / elapsed),
        "sub_lstm_ticks_per_s_median": round(ticks / median),
        "gflops_gate_matmul": round(ticks * 2 * agent.state_size * 4 * agent.state_size / elapsed / 1e9, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_mb": round(rss0 / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps (noisier)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed lifetimes per configuration (best and median reported)")
    parser.add_argument("--torch-only", action="store_true", help="run without the native tick (RULEGYM_NATIVE=0)")
    parser.add_argument("--one", nargs=3, metavar=("LIFETIMES", "BACKWARD", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(int(args.one[0]), args.one[1] == "1", int(args.one[2]), args.threads, args.repeats)))
        return
    env = dict(os.environ, **({"RULEGYM_NATIVE": "0"} if args.torch_only else {}))
    results = []
    for backward in (False, True):
        for lifetimes in (1, 8, 32):
            steps = (4 if args.quick else 10) if backward else (5 if args.quick else 20)
            cmd = [sys.executable, __file__, "--one", str(lifetimes), "1" if backward else "0", str(steps)]
            cmd += ["--threads", str(args.threads), "--repeats", str(args.repeats if not args.quick else 2)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    peak = matmul_peak_gflops(args.threads)
    for r in results:
        r["fraction_of_matmul_peak"] = round(r["gflops_gate_matmul"] / peak, 4)
    import torch

    print(
        json.dumps(
            {
                "benchmark": "vsml",
                "model": "784->10, N=16, M=8, 2 ticks",
                "threads": args.threads,
                "native_tick_enabled": not args.torch_only,
                "torch": torch.__version__,
                "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count()},
                "matmul_peak_gflops": round(peak, 2),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

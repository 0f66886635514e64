"""Vector-synapse network speed and memory against the number of neurons and the state size.

Prints one JSON document. For every (hidden neurons, state size) and for ``forward`` (no
graph) and ``forward_backward`` (a 10-step chunk with its graph, then backward: one
truncated-BPTT block of the learning-to-remember learner), it reports synapse updates per
second (lifetimes x synapses x steps / seconds), steps per second and the peak resident memory
(``ru_maxrss``) of a fresh process that ran only that configuration, next to the peak of a
process that only imported torch and built the agent (``baseline_maxrss_mb``).

The network is Gregor's character-stream layout (io="tied": 27 input/prediction neurons plus
one hidden layer), OP_h = OP_w = gated, update-net width 32 (options change these).

    python benchmarks/vsn.py [--quick] [--threads 1] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def _maxrss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


def run_one(cfg: dict) -> dict:
    """Measure one configuration in this process (called in a fresh subprocess)."""
    import torch

    from rulegym.agents import make_agent

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    agent = make_agent(
        "vsn", 27, 27, io="tied", neurons=cfg["neurons"], state_size=cfg["state_size"],
        op_h=cfg["op_h"], op_w=cfg["op_w"], op_hidden=cfg["op_hidden"],
    )
    B, T = cfg["batch"], cfg["steps"]
    g = torch.Generator().manual_seed(0)
    xs = torch.nn.functional.one_hot(torch.randint(27, (T + 1, B), generator=g), 27).float()
    state0 = agent.initial_state(B, g)
    baseline = _maxrss_mb()

    def chunk() -> None:
        state = state0
        y_prev = err_prev = torch.zeros(B, 27)
        losses = []
        for t in range(T):
            logits, state = agent.step({"x": xs[t], "y_prev": y_prev, "err_prev": err_prev}, state)
            losses.append(torch.nn.functional.cross_entropy(logits, xs[t + 1].argmax(-1)))
            y_prev = xs[t + 1]
            err_prev = logits.detach().softmax(-1) - y_prev
        if cfg["mode"] == "forward_backward":
            agent.zero_grad(set_to_none=True)
            torch.stack(losses).mean().backward()

    with torch.set_grad_enabled(cfg["mode"] == "forward_backward"):
        chunk()  # warm-up
        done, start = 0, time.perf_counter()
        while True:
            chunk()
            done += 1
            elapsed = time.perf_counter() - start
            if elapsed >= cfg["min_seconds"]:
                break
    steps_per_s = done * T / elapsed
    syn = agent.num_synapses()
    return {
        **{k: cfg[k] for k in ("mode", "neurons", "state_size", "batch")},
        "total_neurons": agent.n_total,
        "synapses_per_lifetime": syn,
        "meta_parameters": sum(p.numel() for p in agent.parameters()),
        "synapse_updates_per_s": round(steps_per_s * B * syn, 1),
        "lifetime_steps_per_s": round(steps_per_s * B, 2),
        "ms_per_batched_step": round(1e3 / steps_per_s, 3),
        "peak_maxrss_mb": round(_maxrss_mb(), 1),
        "baseline_maxrss_mb": round(baseline, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes, shorter timing")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per measurement (default 1)")
    ap.add_argument("--batch", type=int, default=8, help="lifetimes per batch (default 8)")
    ap.add_argument("--steps", type=int, default=10, help="steps per timed chunk (default 10, one BPTT block)")
    ap.add_argument("--op-h", default="gated")
    ap.add_argument("--op-w", default="gated")
    ap.add_argument("--op-hidden", type=int, default=32)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one JSON config here
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    neurons = [16, 32] if args.quick else [16, 32, 64, 128]
    sizes = [6, 14] if args.quick else [2, 6, 14]
    min_seconds = 0.5 if args.quick else 2.0
    results = []
    for mode in ("forward", "forward_backward"):
        for n in neurons:
            for s in sizes:
                cfg = {
                    "mode": mode, "neurons": n, "state_size": s, "batch": args.batch, "steps": args.steps,
                    "threads": args.threads, "min_seconds": min_seconds, "op_h": args.op_h, "op_w": args.op_w,
                    "op_hidden": args.op_hidden,
                }
                out = subprocess.run(
                    [sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True, check=False
                )
                if out.returncode != 0:
                    results.append({**cfg, "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"})
                else:
                    results.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    import torch

    print(
        json.dumps(
            {
                "benchmark": "vsn",
                "layout": "tied char stream (27 io neurons + 1 hidden layer), all-to-all",
                "op_h": args.op_h,
                "op_w": args.op_w,
                "op_hidden": args.op_hidden,
                "threads": args.threads,
                "torch": torch.__version__,
                "machine": platform.machine(),
                "processor": platform.processor(),
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

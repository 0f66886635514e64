"""Speed and memory of meta-training: lifetimes/s and peak RSS of BPTT and OpenAI-ES.

Runs ``python -m rulegym.learners`` in fresh processes -- one process, and two under
``torchrun`` on loopback -- for the Meta RNN and, when it is registered, VSML (784 -> 10), and
prints one JSON document. Speed is the median over iterations after the first (warm-up) of
``lifetimes_per_s`` as rank 0 logs it (for ES every population member's lifetime counts);
memory is the peak resident set size of the largest rank (``ru_maxrss``). With the full run
it also measures peak memory of a long lifetime with and without activation checkpointing.

    python benchmarks/learners.py            # a few minutes on 2 cores
    python benchmarks/learners.py --quick    # a smoke run
    python benchmarks/learners.py --threads  # also 1 process x 2 threads

It also times the learning-algorithm cloning learner (``rulegym.learners.cloning``): steps/s
of each curriculum stage at its default batch (512 connections; 32 networks of 6->5->4), in
this process with one torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(config: dict[str, Any], workdir: Path, name: str, processes: int) -> dict[str, Any]:
    """Meta-train ``config`` in fresh process(es); return speed and memory from the run folder."""
    run_dir = workdir / name
    cfg_path = workdir / f"{name}.json"
    cfg_path.write_text(json.dumps(config))
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS=str(config["num_threads"]))
    args = ["-m", "rulegym.learners", "--config", str(cfg_path), "--run-dir", str(run_dir)]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", *args]
    else:
        cmd = [sys.executable, *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"name": name, "processes": processes, "error": (proc.stderr or proc.stdout)[-2000:]}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    speeds = [r["lifetimes_per_s"] for r in rows[1:]] or [r["lifetimes_per_s"] for r in rows]
    iters = [r["iteration_s"] for r in rows[1:]] or [r["iteration_s"] for r in rows]
    return {
        "name": name,
        "processes": processes,
        "threads_per_process": config["num_threads"],
        "lifetimes_per_s": round(statistics.median(speeds), 3),
        "iteration_s_median": round(statistics.median(iters), 4),
        "lifetimes_per_iteration": summary["lifetimes_per_iteration"],
        "peak_rss_mb": round(summary["peak_rss_mb"], 1),
        "iterations": summary["iterations"],
        "meta_params": summary["meta_params"],
        "process_wall_s": round(wall, 1),
    }


def cloning_speed(steps: int) -> list[dict[str, Any]]:
    """Steps/s of each cloning stage at the default batch sizes (one thread, this process)."""
    import torch

    from rulegym.learners.cloning import STAGES, CloningConfig, train_cloning

    torch.set_num_threads(1)
    rows = []
    for i, stage in enumerate(STAGES):
        iterations = tuple(steps if j == i else 0 for j in range(len(STAGES)))
        config = CloningConfig(iterations=iterations, log_every=max(1, steps))
        start = time.perf_counter()
        train_cloning(config)
        elapsed = time.perf_counter() - start
        rows.append({"stage": stage, "steps": steps, "steps_per_s": round(steps / elapsed, 2),
                     "batch": {"shallow": config.connections, "chain": config.chain_connections}.get(stage, config.networks),
                     **({"chain_length": config.chain_length} if stage == "chain" else {})})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings, fewer variants (a smoke run)")
    parser.add_argument("--threads", action="store_true", help="also one process with 2 torch threads (slow on a busy machine)")
    args = parser.parse_args()
    q = args.quick

    import torch

    import rulegym.agents as agents

    notes: list[str] = []
    common = {"progress": False, "tensorboard": False, "checkpoint_every": 0, "eval_lifetimes": 2, "seed": 0}

    def random_task(length: int) -> list[dict[str, Any]]:
        return [{"env_id": "rulegym/Random-v0", "options": {"x_shape": 784, "n_images": 20, "n_classes": 10, "lifetime_length": length}}]

    suites: list[tuple[str, dict[str, Any]]] = []
    rnn_len = 50 if q else 100
    suites.append(("meta_rnn/bptt", {**common, "learner": "bptt", "agent": "meta_rnn", "agent_options": {"hidden": 128},
                                      "tasks": random_task(rnn_len), "batch_size": 32, "iterations": 3 if q else 6}))
    suites.append(("meta_rnn/es", {**common, "learner": "es", "agent": "meta_rnn", "agent_options": {"hidden": 128},
                                    "tasks": random_task(rnn_len), "batch_size": 4, "population": 32, "members_per_chunk": 16,
                                    "iterations": 3 if q else 5}))
    if "vsml" in agents.AGENTS:
        vsml_len = 10 if q else 20
        suites.append(("vsml/bptt", {**common, "learner": "bptt", "agent": "vsml", "tasks": random_task(vsml_len),
                                      "batch_size": 4, "iterations": 2 if q else 3}))
        suites.append(("vsml/es", {**common, "learner": "es", "agent": "vsml", "tasks": random_task(vsml_len),
                                    "batch_size": 2, "population": 8, "members_per_chunk": 8, "iterations": 2 if q else 3}))
    else:
        notes.append("agent 'vsml' is not registered in this checkout; its rows are skipped.")

    results = []
    settings = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="rulegym-bench-learners-") as tmp:
        work = Path(tmp)
        for name, cfg in suites:
            settings[name] = {k: v for k, v in cfg.items() if k not in common}
            if q:  # smoke run: both process counts for the Meta RNN, one process for the rest
                variants = [(1, 1), (2, 1)] if name.startswith("meta_rnn") else [(1, 1)]
            else:
                variants = [(1, 1), (1, 2), (2, 1)] if args.threads else [(1, 1), (2, 1)]
            for procs, threads in variants:
                tag = f"{name.replace('/', '_')}_{procs}p{threads}t"
                res = _run({**cfg, "num_threads": threads}, work, tag, procs)
                res["suite"] = name
                results.append(res)
                print(f"# {tag}: {res.get('lifetimes_per_s', res.get('error', '?'))} lifetimes/s", file=sys.stderr, flush=True)
        memory = []
        if not q:  # one long lifetime, full BPTT: activation checkpointing bounds memory
            for seg in (0, 50):
                cfg = {**common, "learner": "bptt", "agent": "meta_rnn", "agent_options": {"hidden": 128},
                       "tasks": random_task(1000), "batch_size": 32, "iterations": 2, "num_threads": 1,
                       "activation_checkpoint_steps": seg}
                res = _run(cfg, work, f"meta_rnn_bptt_L1000_ckpt{seg}", 1)
                res["activation_checkpoint_steps"] = seg
                memory.append(res)
                print(f"# L=1000 checkpoint segment {seg}: {res.get('peak_rss_mb')} MB", file=sys.stderr, flush=True)

    out = {
        "benchmark": "learners",
        "quick": q,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "load_average_1_5_15_before": [round(x, 2) for x in load_before],
                    "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()]},
        "task": "rulegym/Random-v0, x 784 -> 10 classes, 20 images",
        "settings": settings,
        "results": results,
        "bptt_long_lifetime_memory": memory,
        "cloning": cloning_speed(20 if q else 200),
        "notes": notes + [
            "lifetimes_per_s: median over iterations after the first, as rank 0 times them; ES counts every member's lifetimes.",
            "peak_rss_mb: the largest ru_maxrss over ranks (includes the Python/torch baseline of ~300 MB).",
            "2 processes run under torchrun on loopback (gloo), 1 torch thread each.",
            "speed-ups need idle cores: on a shared machine (see load_average) 2 threads or 2 processes can be slower than 1.",
        ],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

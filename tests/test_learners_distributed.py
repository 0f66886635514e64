"""Learners on several processes (torchrun on loopback) and exact resume after SIGKILL.

* 2 processes under ``torchrun`` end with the same meta-parameters as 1 process with the same
  total batch / population (BPTT with an uneven batch split and truncation; ES with a pair split
  across ranks, chunks and a task mixture).
* A run killed with SIGKILL after its k-th checkpoint -- while it is already computing past
  it -- and resumed ends with meta-parameters IDENTICAL (torch.equal) to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from rulegym.learners import config_from_dict, meta_train
from rulegym.learners.distributed import find_free_port

PYTHON = sys.executable

BPTT = {
    "learner": "bptt",
    "agent": "meta_rnn",
    "agent_options": {"hidden": 8, "learn_init": True},
    "iterations": 4,
    "batch_size": 5,
    "lr": 0.01,
    "truncation": 7,
    "num_threads": 1,
    "progress": False,
    "eval_lifetimes": 4,
    "tasks": [{"env_id": "rulegym/Random-v0", "options": {"x_shape": 6, "n_images": 3, "n_classes": 3, "lifetime_length": 16}}],
}
ES = {
    "learner": "es",
    "agent": "meta_rnn",
    "agent_options": {"hidden": 6},
    "iterations": 4,
    "batch_size": 3,
    "population": 10,
    "members_per_chunk": 3,
    "num_threads": 1,
    "progress": False,
    "eval_lifetimes": 4,
    "tasks": [
        {"env_id": "rulegym/Random-v0", "options": {"x_shape": 6, "n_images": 3, "n_classes": 2, "lifetime_length": 12}},
        {"env_id": "rulegym/SumSign-v0", "options": {"x_shape": 6, "lifetime_length": 10}, "weight": 2.0},
    ],
}


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _torchrun(config: dict, run_dir: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    cfg_path = run_dir.parent / f"{run_dir.name}.json"
    cfg_path.write_text(json.dumps(config))
    for attempt in (1, 2):
        cmd = [
            PYTHON, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
            f"--master_port={find_free_port()}", "-m", "rulegym.learners", "--config", str(cfg_path), "--run-dir", str(run_dir),
        ]
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
        output = proc.stdout[-4000:] + proc.stderr[-4000:]
        # a worker killed by SIGABRT was seen once in ~40 runs on a heavily loaded 2-core box (not
        # reproduced; gloo aborts the process on some socket errors, cf. pytorch/gloo#514): retry
        # such a crash once, in a fresh folder. A wrong result or a Python exception is never retried.
        died = any(f"({sig}) received by PID" in output for sig in ("SIGABRT", "SIGSEGV", "SIGBUS"))
        if proc.returncode != 0 and attempt == 1 and died:
            warnings.warn(f"torchrun worker died from a signal; retrying once. Output:\n{output}")
            shutil.rmtree(run_dir, ignore_errors=True)
            continue
        break
    assert proc.returncode == 0, output
    return proc


@pytest.mark.parametrize("config", [BPTT, ES], ids=["bptt", "es"])
def test_two_processes_match_one(tmp_path, config):
    _torchrun(config, tmp_path / "two")
    two = torch.load(tmp_path / "two" / "meta_params.pt", weights_only=True)
    one, logs = meta_train(config_from_dict(config), tmp_path / "one")
    assert set(one) == set(two)
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=0)
    # the run actually moved the meta-parameters, so agreement is not trivial
    init, _ = meta_train(config_from_dict({**config, "iterations": 1}), tmp_path / "init")
    assert any(not torch.allclose(init[k], one[k]) for k in one)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iterations"] == config["iterations"]
    two_logs = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [round(r["meta_loss"], 5) for r in two_logs] == [round(r["meta_loss"], 5) for r in logs]


CHILD = textwrap.dedent(
    """
    import json, sys, time
    import torch
    from rulegym.learners import checkpoint as ck
    from rulegym.learners import meta_train

    config, run_dir, kill_after = json.loads(open(sys.argv[1]).read()), sys.argv[2], int(sys.argv[3])
    original = ck.save_checkpoint

    def save(path, payload):
        if payload["step"] > kill_after:  # computed past checkpoint k: wait here to be killed
            print("BLOCKED", payload["step"], flush=True)
            time.sleep(600)
        original(path, payload)
        print("CHECKPOINT", payload["step"], flush=True)

    ck.save_checkpoint = save
    meta_train(config, run_dir)
    print("FINISHED", flush=True)
    """
)


@pytest.mark.parametrize("config", [BPTT, ES], ids=["bptt", "es"])
def test_sigkill_and_resume_is_exact(tmp_path, config):
    config = {**config, "iterations": 6, "checkpoint_every": 2}
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "config.json").write_text(json.dumps(config))
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [PYTHON, str(tmp_path / "child.py"), str(tmp_path / "config.json"), str(run_dir), "2"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line.strip())
            if line.startswith("BLOCKED"):
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (seen, proc.stderr.read()[-3000:])
    assert seen == ["CHECKPOINT 2", "BLOCKED 4"]
    # the killed run got past its checkpoint (iterations 3 and 4 were computed and lost)
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 2
    assert not (run_dir / "meta_params.pt").exists()

    resumed, logs = meta_train(config_from_dict(config), run_dir, resume=True)
    straight, straight_logs = meta_train(config_from_dict(config), tmp_path / "straight")
    assert set(resumed) == set(straight)
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k
    assert [r["step"] for r in logs] == list(range(1, 7))
    assert [r["meta_loss"] for r in logs] == [r["meta_loss"] for r in straight_logs]
    assert not list(run_dir.glob(".*.tmp.*")), "a temporary checkpoint file was left behind"

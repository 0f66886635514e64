"""``meta_train``: one entry point for every learner, on one process or under torchrun.

A run folder holds::

    config.json        the resolved config (what was run)
    checkpoint.pt      the latest checkpoint (atomic; resumes exactly)
    tensorboard/       TensorBoard events
    metrics.jsonl      one line of metrics per iteration
    meta_params.pt     the final meta-parameters (an agent state_dict)
    summary.json       final metrics, speed, peak memory

Only rank 0 writes; every rank computes. Rank 0 reads the checkpoint and broadcasts it, so the
other ranks need no access to the run folder.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from rulegym.learners import checkpoint as ckpt
from rulegym.learners.base import Learner
from rulegym.learners.bptt import BPTTLearner
from rulegym.learners.config import BPTTConfig, ConfigError, ESConfig, LearnerConfig, config_from_dict
from rulegym.learners.distributed import DistContext, init_distributed
from rulegym.learners.es import ESLearner
from rulegym.learners.logging import RunLogger

__all__ = ["make_learner", "meta_train"]

CONFIG_NAME = "config.json"


def make_learner(config: LearnerConfig, dist: DistContext | None = None, device: str | torch.device | None = None) -> Learner:
    """The learner a config asks for."""
    if isinstance(config, BPTTConfig):
        return BPTTLearner(config, dist, device)
    if isinstance(config, ESConfig):
        return ESLearner(config, dist, device)
    raise TypeError(f"no learner for config type {type(config).__name__}.")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def _config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k) and k not in LearnerConfig.RESUMABLE_CHANGES]


def _prepare_run_dir(run_dir: Path, config: LearnerConfig, resume: bool) -> dict[str, Any] | None:
    """Rank 0: check the folder, write config.json, and read the checkpoint to resume from."""
    path = run_dir / ckpt.CHECKPOINT_NAME
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = None
    if path.exists():
        if not resume:
            raise FileExistsError(f"{run_dir} already holds a checkpoint; pass --resume (resume=True) to continue it, or use a new run folder.")
        payload = ckpt.load_checkpoint(path)
        diff = _config_differences(payload["config"], config.to_dict())
        if diff:
            details = "; ".join(f"{k}: {payload['config'].get(k)!r} -> {config.to_dict().get(k)!r}" for k in diff)
            raise ConfigError(
                f"cannot resume {run_dir} with a different config ({details}); only "
                f"{', '.join(sorted(LearnerConfig.RESUMABLE_CHANGES))} may change on resume."
            )
        if payload["step"] > config.iterations:
            raise ConfigError(f"the checkpoint is at iteration {payload['step']}, beyond iterations={config.iterations}.")
    elif resume and (run_dir / CONFIG_NAME).exists():
        print(f"rulegym.learners: {run_dir} has no checkpoint yet; starting from iteration 0.", file=sys.stderr)
    _write_json(run_dir / CONFIG_NAME, config.to_dict())
    return payload


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def meta_train(
    config: LearnerConfig | Mapping[str, Any], run_dir: str | Path, *, resume: bool = False
) -> tuple[dict[str, Tensor], list[dict[str, float]]]:
    """Meta-train the config's agent with its learner; return (meta-parameters, logs).

    ``meta-parameters`` is the agent's ``state_dict`` (CPU tensors); ``logs`` holds one dict
    of metrics per iteration (``step``, ``meta_loss``, ``meta_train_accuracy``, ``grad_norm``,
    ``lifetimes_per_s``, ``skipped_updates``, ES fitness statistics, and ``meta_test/...``
    entries at evaluation steps -- on rank 0). With ``resume=True`` a checkpoint in
    ``run_dir`` is continued exactly; without it an existing checkpoint is an error.
    Under torchrun (WORLD_SIZE > 1) the process group is joined here and left at the end.
    The global RNGs (torch, numpy, random) are seeded from ``config.seed`` (or restored from
    the checkpoint), so the same config gives the same run.
    """
    config = config_from_dict(config) if not isinstance(config, LearnerConfig) else config
    run_dir = Path(run_dir)
    _require_device(config.device)
    dist = init_distributed(config.device)
    threads = torch.get_num_threads()
    try:
        return _meta_train(config, run_dir, resume, dist)
    finally:
        torch.set_num_threads(threads)  # num_threads applies to the run, not to the caller afterwards
        dist.close()


def _require_device(device: str) -> None:
    """A CUDA device must exist before anything is written or a process group is joined."""
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device={device!r}, but this torch sees no CUDA device (torch.cuda.is_available() is False); "
            "use device='cpu' (--set device=cpu), or a CUDA build of torch on a machine with a GPU."
        )
    index = torch.device(device).index
    if index is not None and index >= torch.cuda.device_count():
        raise ConfigError(f"device={device!r}, but this machine has {torch.cuda.device_count()} CUDA device(s); use cuda:0 to cuda:{torch.cuda.device_count() - 1}.")


def _meta_train(config: LearnerConfig, run_dir: Path, resume: bool, dist: DistContext):
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    device = torch.device(config.device)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)

    status: tuple[str, Any] = ("ok", None)
    if dist.is_main:
        try:
            status = ("ok", _prepare_run_dir(run_dir, config, resume))
        except Exception as err:  # noqa: BLE001 - every rank must learn about it
            status = ("error", err)
    status = dist.broadcast_object(status)
    if status[0] == "error":
        raise status[1]
    payload = status[1]

    # a resumed run's meta-parameters come from its checkpoint: its init source is not read
    # again (it may have moved since, or changed)
    learner = make_learner(config.replace(init=None) if payload is not None else config, dist, device)
    logs: list[dict[str, float]] = []
    if payload is not None:
        learner.load_state_dict(payload)
        ckpt.restore_rng(payload["rng"])
        logs = [dict(row) for row in payload["logs"]]

    logger = RunLogger(
        run_dir,
        config.to_dict(),
        enabled=dist.is_main,
        tensorboard=config.tensorboard,
        progress=config.progress,
        total=config.iterations,
        start_step=learner.step,
        log_every=config.log_every,
    )
    first_step = learner.step
    wall = time.perf_counter()
    train_time = 0.0
    try:
        while learner.step < config.iterations:
            metrics = learner.train_step()
            train_time += metrics.get("iteration_s", 0.0)
            step = learner.step
            last = step == config.iterations
            if dist.is_main and ((config.eval_every and step % config.eval_every == 0) or last):
                metrics.update(learner.evaluate())
            metrics = {k: (float(v) if isinstance(v, float) else v) for k, v in metrics.items()}
            logs.append(metrics)
            logger.log(step, metrics)
            if (config.checkpoint_every and step % config.checkpoint_every == 0) or last:
                if dist.is_main:
                    state = learner.state_dict()
                    state.update(logs=logs, config=config.to_dict())
                    ckpt.save_checkpoint(run_dir / ckpt.CHECKPOINT_NAME, state)
                    _write_jsonl(run_dir / "metrics.jsonl", logs)
                    logger.flush()
    finally:
        logger.close()
        learner.close()

    meta_params = {k: v.detach().cpu().clone() for k, v in learner.agent.state_dict().items()}
    peak = dist.all_reduce_max(_peak_rss_mb())
    if dist.is_main:
        ckpt.atomic_save(meta_params, run_dir / "meta_params.pt")
        _write_jsonl(run_dir / "metrics.jsonl", logs)
        ran = learner.step - first_step
        summary = {
            "learner": config.learner,
            "agent": config.agent,
            "iterations": learner.step,
            "iterations_this_session": ran,
            "world_size": dist.world_size,
            "torch_threads": torch.get_num_threads(),
            "meta_params": learner.num_meta_params,
            "wall_s": time.perf_counter() - wall,
            "train_s": train_time,
            "lifetimes_per_iteration": config.batch_size * (config.population if isinstance(config, ESConfig) else 1),
            "lifetimes_per_s": (ran * config.batch_size * (config.population if isinstance(config, ESConfig) else 1)) / train_time if train_time > 0 else math.nan,
            "peak_rss_mb": peak,
            "skipped_updates": learner.skipped_updates,
            "final": logs[-1] if logs else {},
        }
        _write_json(run_dir / "summary.json", summary)
    dist.barrier()  # leave together: no rank tears its sockets down while another still writes
    return meta_params, logs

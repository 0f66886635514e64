"""Atomic checkpoints that resume a run exactly, loadable with ``torch.load(weights_only=True)``.

A checkpoint holds everything the next iteration depends on: meta-parameters, optimiser state,
the learner's own state (its torch.Generator, data position, counters), step, the logs so far,
and every global RNG state (torch CPU and CUDA, numpy, Python ``random``). RNG states are
stored as tensors and plain types so the safe ``weights_only`` unpickler accepts them.

Writes go to a temporary file in the same folder, are flushed to disk, and replace the old
checkpoint with ``os.replace``: a process killed at any moment leaves either the old or the
new checkpoint, never a torn one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CHECKPOINT_NAME", "atomic_save", "capture_rng", "load_checkpoint", "restore_rng", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (damaged, or of another format)."""


def capture_rng() -> dict[str, Any]:
    """Every global RNG state as tensors and plain types."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_version), "internal": torch.tensor(py_internal, dtype=torch.int64), "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the global RNG states captured by :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file, fsync, then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically (``payload`` from the learner plus RNG states)."""
    atomic_save({"format": FORMAT_VERSION, **payload, "rng": capture_rng()}, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with the safe unpickler; clear errors for missing or damaged files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise CheckpointError(
            f"checkpoint {path} could not be read ({type(err).__name__}: {err}); it is damaged or not a rulegym checkpoint. "
            "Restore a copy of it, or move it away to start the run again from iteration 0."
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has an unknown format (expected format {FORMAT_VERSION}); it was written by another "
            "version of rulegym or is not a rulegym checkpoint. Resume it with the version that wrote it, or use a new run folder."
        )
    return payload

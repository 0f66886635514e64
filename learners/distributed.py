"""Running a learner on several processes with ``torch.distributed`` (gloo on CPU, nccl on GPU).

Start with ``torchrun --nproc_per_node=N -m rulegym.learners ...``; every rank runs the same
program. What crosses processes is small and fixed by the learner:

* BPTT: each rank runs its slice of the lifetime batch; the *sums* of its gradients, masked
  losses and counts are all-reduced in one flat buffer and divided by the global count, so the
  update equals the single-process mean over the full batch (up to float summation order).
* ES: each rank evaluates a slice of the population; only the per-member fitness statistics
  are all-gathered; every rank rebuilds all the noise from the shared seeds and applies the
  identical update, so the meta-parameters never travel.

Defaults for a single machine: when ``MASTER_ADDR`` is unset it becomes 127.0.0.1, and when the
master address is a loopback address ``GLOO_SOCKET_IFNAME`` defaults to ``lo`` so gloo's
sockets stay on loopback (set both explicitly for multi-node runs).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DistContext", "find_free_port", "init_distributed", "shard"]


def _is_loopback(addr: str) -> bool:
    if addr in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for tests and local launches)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shard(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous slice [lo, hi) of ``n`` items for ``rank``: sizes differ by at most one."""
    base, extra = divmod(int(n), int(world_size))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


@dataclass
class DistContext:
    """Who this process is and the few collectives the learners use (no-ops on one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False
    comm_device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """Sum of ``t`` over ranks (a new tensor on t's device)."""
        if not self.enabled:
            return t
        buf = t.detach().to(self.comm_device).clone()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.to(t.device)

    def all_reduce_max(self, value: float) -> float:
        if not self.enabled:
            return value
        buf = torch.tensor([float(value)], dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(buf, op=dist.ReduceOp.MAX)
        return float(buf.item())

    def all_gather_rows(self, rows: Tensor, counts: list[int]) -> Tensor:
        """Concatenate per-rank row blocks (rank r holds ``counts[r]`` rows) in rank order."""
        if not self.enabled:
            return rows
        width = max(counts)
        padded = torch.zeros((width, *rows.shape[1:]), dtype=rows.dtype, device=self.comm_device)
        padded[: rows.shape[0]] = rows.to(self.comm_device)
        out = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(out, padded)
        return torch.cat([o[:c] for o, c in zip(out, counts)]).to(rows.device)

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Make every rank hold rank 0's parameters and buffers (guards against init drift)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                buf = t.detach().to(self.comm_device).clone()
                dist.broadcast(buf, src=0)
                t.copy_(buf.to(t.device))

    def broadcast_object(self, obj):
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def init_distributed(device: str = "cpu", timeout_s: float = 1800.0) -> DistContext:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else a one-process context.

    Uses an existing default group when there is one. The backend is nccl when ``device`` is
    CUDA, else gloo; with CUDA each rank takes ``cuda:LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        backend = dist.get_backend()
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        comm = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        return DistContext(dist.get_rank(), dist.get_world_size(), local, backend, False, comm)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed.")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if _is_loopback(os.environ["MASTER_ADDR"]):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    for key in ("RANK", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(
                f"WORLD_SIZE={world} but {key} is unset; start distributed runs with "
                "torchrun --nproc_per_node=N -m rulegym.learners ... (it sets RANK, MASTER_ADDR, MASTER_PORT)."
            )
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda")
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} but CUDA is not available; use device='cpu' (gloo).")
        torch.cuda.set_device(local)
    backend = "nccl" if use_cuda else "gloo"
    kwargs = {"timeout": datetime.timedelta(seconds=timeout_s)}
    if use_cuda:
        kwargs["device_id"] = torch.device("cuda", local)
    dist.init_process_group(backend, **kwargs)
    comm = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    return DistContext(dist.get_rank(), dist.get_world_size(), local, backend, True, comm)

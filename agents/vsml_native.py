"""The fused native tick of VSML sub-LSTMs for float32 on the CPU (optional).

``native/vsml_tick.cpp`` runs every tick of a step for a block of 16 connections while the
block sits in registers: gate product, gate nonlinearities and cell update without writing
the [L, 4N, B, A] gates to memory (see the file's header for the arithmetic). It is compiled
on first use with the system C++ compiler (``$CXX``, else ``c++``; about a second) into the
cache folder ``$RULEGYM_CACHE/kernels`` (else ``~/.cache/rulegym/kernels``), keyed by the
source, the flags and the machine, and loaded with ctypes (which releases the GIL during the call). Work is split over
``torch.get_num_threads()`` OpenMP threads; the library links libgomp by its soname, so it
shares the runtime torch has already loaded -- the same threads, not a second pool spinning
against torch's for the cores.

The new state goes into recycled buffers (:class:`BufferPool`): a fresh 16 MB output costs
its page faults and the kernel's zeroing of every page, about 8% of a step at 32 lifetimes of
784->10, and a lifetime loop drops each old state one step later.

It serves only the no-grad float32 CPU path of :func:`rulegym.agents.vsml_kernels.lstm_ticks`;
gradients, float64, torch.func transforms and other devices use the torch paths, which the
native tick is tested against. Without a compiler (or with ``RULEGYM_NATIVE=0``) everything
runs on the torch paths, with one warning naming the reason when the build fails.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from rulegym.envs.data.paths import ENV_CACHE, user_cache_base

SOURCE = Path(__file__).with_name("native") / "vsml_tick.cpp"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c++17"]
#: connections per work unit of the kernel
BLOCK = 16
#: the kernel handles state sizes and message sizes up to these
MAX_STATE = 32
MAX_MESSAGE = 64

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


class BufferPool:
    """Output tensors reused once nothing references their memory any more.

    Each buffer is handed out as a fresh alias (``view``) of a pooled base tensor, so every
    tensor that still shares its memory -- the state dict's entry, views of it, a numpy array
    made from it -- holds a reference to the storage; a buffer is taken again only when the
    storage's reference count is back to what the pool's own base tensor accounts for. Where
    torch offers no storage reference count, every call allocates (the pool stays empty).
    Bounded by ``max_bytes``; :meth:`clear` frees everything.
    """

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = max_bytes
        self._bases: dict[tuple, list[Tensor]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        use_count = getattr(torch._C, "_storage_Use_Count", None)
        self._use_count = use_count
        self._idle = None
        if use_count is not None:
            try:
                probe = torch.empty(1)
                self._idle = use_count(probe.untyped_storage()._cdata)
            except Exception:  # a torch without a usable count: no recycling
                self._use_count = None

    def _is_idle(self, base: Tensor) -> bool:
        return self._use_count(base.untyped_storage()._cdata) == self._idle

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """An uninitialised CPU tensor of this shape, in a recycled buffer where one is idle."""
        if self._use_count is None:
            return torch.empty(shape, dtype=dtype)
        # tensors made under inference_mode are inference tensors, and so would be every later
        # view of them: such buffers serve inference_mode calls only
        key = (tuple(shape), dtype, torch.is_inference_mode_enabled())
        with self._lock:
            bases = self._bases.setdefault(key, [])
            for base in bases:
                if self._is_idle(base):
                    return base.view(base.shape)
            base = torch.empty(shape, dtype=dtype)
            size = base.numel() * base.element_size()
            if self._bytes + size > self.max_bytes:
                return base  # over the bound: an ordinary, unpooled tensor
            bases.append(base)
            self._bytes += size
            return base.view(base.shape)

    def clear(self) -> None:
        """Drop every pooled buffer (tensors handed out stay valid; they own their memory)."""
        with self._lock:
            self._bases.clear()
            self._bytes = 0


#: the pool the native tick writes new states into
BUFFERS = BufferPool()


def _cache_dir() -> Path:
    """``$RULEGYM_CACHE/kernels``, else ``(~/.cache)/rulegym/kernels`` (the decoded-array cache's base)."""
    root = os.environ.get(ENV_CACHE, "").strip()
    base = Path(root).expanduser() if root else user_cache_base() / "rulegym"
    return base / "kernels"


def _machine_key() -> str:
    """What -march=native depends on: the CPU's model and flags."""
    parts = [platform.machine(), platform.processor()]
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags", "Features")):
                parts.append(line)
                if line.startswith(("flags", "Features")):
                    break
    except OSError:
        pass
    return "\n".join(parts)


def _build() -> Path:
    compiler = os.environ.get("CXX", "c++")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join([compiler, *FLAGS]).encode(), _machine_key().encode()]))
    target = _cache_dir() / f"vsml_tick-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, "-o", tmp, str(SOURCE)], check=True, capture_output=True, text=True, timeout=120)
        os.replace(tmp, target)  # atomic: concurrent builders each write their own file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, building it on first use; None where it is unavailable."""
    global _lib, _tried
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        if os.environ.get("RULEGYM_NATIVE", "1") == "0":
            _tried = True
            return None
        try:
            lib = ctypes.CDLL(str(_build()))
            fn = lib.vsml_ticks_f32
            p, i = ctypes.c_void_p, ctypes.c_int64
            fn.argtypes = [p] * 9 + [i] * 6 + [ctypes.c_float, i]
            fn.restype = ctypes.c_int
            if lib.vsml_native_max_state() != MAX_STATE:
                raise RuntimeError("the compiled kernel does not match this module")
            _lib = lib
        except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as err:
            detail = getattr(err, "stderr", None) or str(err)
            warnings.warn(
                f"rulegym: the native VSML tick could not be built or loaded ({detail.strip()[:500]}); "
                "VSML runs on the torch paths (slower). Install a C++ compiler or set CXX, or set "
                "RULEGYM_NATIVE=0 to skip the attempt.",
                RuntimeWarning,
                stacklevel=3,
            )
            _lib = None
        _tried = True
    return _lib


def available() -> bool:
    return library() is not None


def supports(h: Tensor, m_in: Tensor, *others: Tensor) -> bool:
    """Whether the native tick can run these tensors (float32, CPU, state size <= 32, message
    size <= 64)."""
    return (
        h.dtype == torch.float32
        and h.device.type == "cpu"
        and 1 <= h.shape[1] <= MAX_STATE
        and 1 <= m_in.shape[-1] <= MAX_MESSAGE
        and m_in.dtype == torch.float32
        and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in others)
        and available()
    )


def lstm_ticks(
    h: Tensor,
    c: Tensor,
    u: Tensor,
    w_fwd: Tensor,
    m_in: Tensor,
    gate_b: Tensor,
    clip: float | None,
    ticks: int,
    mean_inputs: bool = False,
) -> tuple[Tensor, ...]:
    """``ticks`` ticks of all sub-LSTMs, as :func:`vsml_kernels.lstm_tick_reference` defines them.

    h, c: [L, N, B, A]; u [4N, N]; w_fwd [4N, M] and m_in [L, A, M] (the input part of the
    gates, w_fwd m_a, is formed per block inside the kernel); gate_b [L, 4N, B] (bias
    included). Returns new (h, c) -- and with ``mean_inputs`` the new h averaged over the
    inputs [L, N, B], summed by the kernel as it stores h. The inputs are not modified.
    """
    lib = library()
    if lib is None:
        raise RuntimeError("the native VSML tick is not available; check vsml_native.available() first")
    L, n, b, a = h.shape
    msg = m_in.shape[-1]
    h, c, u, w_fwd, m_in, gate_b = (t.contiguous() for t in (h, c, u, w_fwd, m_in, gate_b))
    h_out, c_out = BUFFERS.empty(h.shape), BUFFERS.empty(c.shape)
    blocks = -(-a // BLOCK)
    h_sum = torch.empty(L, n, b, blocks, dtype=h.dtype) if mean_inputs else None
    ptrs = [t.data_ptr() for t in (h, c, h_out, c_out)] + [h_sum.data_ptr() if h_sum is not None else None]
    ptrs += [t.data_ptr() for t in (u, w_fwd, m_in, gate_b)]
    clip_value = float(clip) if clip is not None else 0.0
    if lib.vsml_ticks_f32(*ptrs, L, n, b, a, msg, int(ticks), clip_value, torch.get_num_threads()):
        raise RuntimeError(
            f"the native VSML tick rejected state size {n} or message size {msg} (supported: 1..{MAX_STATE}, 1..{MAX_MESSAGE})"
        )
    if h_sum is None:
        return h_out, c_out
    return h_out, c_out, h_sum.sum(dim=3).div_(a)

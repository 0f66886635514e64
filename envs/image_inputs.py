"""Image banks and the per-lifetime input transforms shared by every image task.

An :class:`ImageBank` is a dataset split prepared once per process (resized, channel-first,
flattened to uint8 rows) and shared by every env that uses it. :class:`ImageInputs` turns
bank rows into agent inputs: per-dataset normalisation, then the optional per-lifetime pixel
permutation and Glorot-uniform random projection -- vectorised over lifetimes.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from rulegym.envs import data
from rulegym.envs.protocol import check_flag

NORMALISATIONS = ("standard", "unit")


@dataclass(frozen=True)
class ImageBank:
    """A prepared dataset split: one uint8 row of C*H*W pixels per image."""

    pixels: np.ndarray  # uint8 [M, C*H*W], read-only
    labels: np.ndarray  # int64 [M]
    n_classes: int
    shape: tuple[int, int, int]  # (C, H, W) of one image
    mean: float  # mean pixel value in [0, 1] over the split, for "standard" normalisation
    std: float
    class_names: tuple[str, ...]

    @functools.cached_property
    def by_class(self) -> tuple[np.ndarray, ...]:
        """Image indices of each class, for class subsets and episodes."""
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], np.arange(self.n_classes + 1))
        return tuple(order[bounds[c] : bounds[c + 1]] for c in range(self.n_classes))


def parse_resize(resize: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    """Normalise a resize option to (height, width) or None, rejecting nonsense clearly."""
    if resize is None:
        return None
    if isinstance(resize, (int, np.integer)) and not isinstance(resize, bool):
        size = (int(resize), int(resize))
    elif isinstance(resize, (tuple, list)) and len(resize) == 2 and all(isinstance(v, (int, np.integer)) for v in resize):
        size = (int(resize[0]), int(resize[1]))
    else:
        raise ValueError(f"resize must be an int, a (height, width) pair or None, got {resize!r}.")
    if min(size) < 1:
        raise ValueError(f"resize must be positive, got {resize!r}.")
    return size


def to_channel_first(images: np.ndarray) -> np.ndarray:
    """[N, H, W] grey or [N, H, W, 3] colour -> [N, C, H, W]."""
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4:
        return images.transpose(0, 3, 1, 2)
    raise ValueError(f"expected images of shape [N, H, W] or [N, H, W, C], got {images.shape}.")


def resize_images(images: np.ndarray, size: tuple[int, int], chunk: int = 4096) -> np.ndarray:
    """Resize uint8 [N, C, H, W] images with antialiased bilinear interpolation, in chunks.

    Chunking keeps the float temporaries small (Omniglot is 19k images of 105x105).
    """
    import torch
    import torch.nn.functional as F

    n, c = images.shape[:2]
    out = np.empty((n, c, *size), dtype=np.uint8)
    with torch.no_grad():
        for i in range(0, n, chunk):
            block = torch.from_numpy(np.array(images[i : i + chunk], dtype=np.float32))
            block = F.interpolate(block, size=size, mode="bilinear", antialias=True, align_corners=False)
            out[i : i + chunk] = block.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def make_bank(images: np.ndarray, labels: np.ndarray, n_classes: int, class_names, resize) -> ImageBank:
    """Prepare a bank from decoded images: channel-first, resized, flattened, with its statistics."""
    chw = to_channel_first(images)
    size = parse_resize(resize)
    if size is not None and size != chw.shape[2:]:
        chw = resize_images(chw, size)
    flat = np.ascontiguousarray(chw.reshape(chw.shape[0], -1))
    flat.flags.writeable = False
    # statistics in float64 over all pixels, per dataset (a scalar mean and std, as is usual
    # for these benchmarks), computed in row blocks to bound the temporaries
    total = 0.0
    total_sq = 0.0
    for i in range(0, flat.shape[0], 8192):
        block = flat[i : i + 8192].astype(np.float64) / 255.0
        total += block.sum()
        total_sq += np.square(block).sum()
    count = flat.size
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 1e-12))
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    labels.flags.writeable = False
    return ImageBank(flat, labels, int(n_classes), tuple(chw.shape[1:]), mean, std, tuple(class_names))


@functools.lru_cache(maxsize=16)
def dataset_bank(name: str, split: str, variant: str | None, root: str, resize: tuple[int, int] | None) -> ImageBank:
    """The bank of one dataset split, prepared once per process and shared by all envs."""
    ds = data.load_image_dataset(name, split, root=root, variant=variant)
    return make_bank(ds.images, ds.labels, ds.n_classes, ds.class_names, resize)


@functools.lru_cache(maxsize=8)
def omniglot_bank(split: str, root: str, resize: tuple[int, int] | None) -> ImageBank:
    """The Omniglot bank of one split (labels are character classes within the split)."""
    ds = data.load_omniglot(split, root=root)
    names = tuple(f"char{c}" for c in range(ds.n_classes))
    return make_bank(ds.images, ds.labels, ds.n_classes, names, resize)


class ImageInputs:
    """Turns bank rows into inputs: normalisation, pixel permutation, random projection.

    The permutation and the projection are drawn per lifetime (they are part of the task
    instance); the projection is a Glorot-uniform D x D matrix, so it keeps the input scale.
    """

    def __init__(
        self,
        bank: ImageBank,
        *,
        normalize: str = "standard",
        flatten: bool = True,
        permute_pixels: bool = False,
        random_projection: bool = False,
    ):
        if normalize not in NORMALISATIONS:
            raise ValueError(f"normalize must be one of {NORMALISATIONS}, got {normalize!r}.")
        self.bank = bank
        self.permute_pixels = check_flag("permute_pixels", permute_pixels)
        self.random_projection = check_flag("random_projection", random_projection)
        flatten = check_flag("flatten", flatten)
        self.dim = bank.pixels.shape[1]
        if normalize == "standard":
            self.scale = np.float32(1.0 / (255.0 * bank.std))
            self.shift = np.float32(-bank.mean / bank.std)
            base = max(abs(bank.mean), abs(1.0 - bank.mean)) / bank.std
        else:
            self.scale, self.shift, base = np.float32(1.0 / 255.0), np.float32(0.0), 1.0
        self.proj_limit = math.sqrt(6.0 / (2 * self.dim))
        # |P x|_i <= sum_j |P_ij| |x_j| <= D * limit * max|x|; small slack for float rounding
        bound = base * (self.dim * self.proj_limit if self.random_projection else 1.0)
        self.x_bound = float(bound * 1.001 + 1e-6)
        self.x_shape: tuple[int, ...] = (self.dim,) if flatten else bank.shape

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The per-lifetime part of the input transform."""
        out: dict[str, np.ndarray] = {}
        if self.permute_pixels:
            out["pixel_perm"] = rng.permutation(self.dim).astype(np.int64)
        if self.random_projection:
            out["proj"] = rng.uniform(-self.proj_limit, self.proj_limit, size=(self.dim, self.dim)).astype(np.float32)
        return out

    def apply(self, inst: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        """Inputs float32 [B, *x_shape] for bank rows ``rows`` [B] of stacked instances."""
        x = self.bank.pixels[rows].astype(np.float32)
        x *= self.scale
        x += self.shift
        if self.permute_pixels:
            x = np.take_along_axis(x, inst["pixel_perm"], axis=1)
        if self.random_projection:
            # one matrix-vector product per lifetime. einsum runs the same loop per item
            # whatever the batch size, so a batch reproduces single lifetimes bit for bit;
            # stacked np.matmul with a vector operand takes a slow non-BLAS path (15x slower
            # at 64 lifetimes) and torch.bmm changes its kernel with the batch size.
            x = np.einsum("bij,bj->bi", inst["proj"], x)
        return x.reshape(x.shape[0], *self.x_shape)

"""Batch augmentations in NumPy, vectorised over the batch.

A transform is a callable ``t(x, rng) -> x`` on a uint8 batch ``(B, H, W, C)`` that draws its
random numbers from the NumPy Generator ``rng``. :func:`to_float_nchw` then normalises and
transposes to float NCHW; :func:`mixup` and :func:`cutmix` work on that float batch with soft
targets.

    >>> aug = standard_augment()                  # random crop (4-px zero padding) + flip
    >>> x = aug(x_uint8, np.random.default_rng(0))
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

__all__ = [
    "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "Compose", "RandAugment", "RandomCrop",
    "RandomHorizontalFlip", "Transform", "cutmix", "cutmix_draw", "make_augment", "mixup",
    "normalise_coefficients", "one_hot",
    "standard_augment", "to_float_nchw",
]

# Per-channel mean and standard deviation of the training images (pixel values / 255).
CIFAR10_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR10_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
CIFAR100_MEAN = (129.3 / 255, 124.1 / 255, 112.4 / 255)
CIFAR100_STD = (68.2 / 255, 65.4 / 255, 70.4 / 255)

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class RandomCrop:
    """Pad by ``padding`` pixels of ``fill`` on every side, then crop ``size`` x ``size`` at a
    random offset per image. Draws ``oy`` then ``ox``: ``rng.integers(0, 2 * padding + 1, B)``
    each (for ``size == H == W``)."""

    def __init__(self, size: int = 32, padding: int = 4, fill: int = 0) -> None:
        self.size, self.padding, self.fill = size, padding, fill

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        b, h, w, _ = x.shape
        p, s = self.padding, self.size
        padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=self.fill)
        oy, ox = self.draw(b, h, w, rng)
        rows = (oy[:, None] + np.arange(s))[:, :, None]
        cols = (ox[:, None] + np.arange(s))[:, None, :]
        return padded[np.arange(b)[:, None, None], rows, cols]

    def draw(self, b: int, h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """The offsets ``(oy, ox)`` into the padded images, as ``__call__`` draws them."""
        p, s = self.padding, self.size
        oy = rng.integers(0, h + 2 * p - s + 1, b)
        ox = rng.integers(0, w + 2 * p - s + 1, b)
        return oy, ox

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p`` (draws ``rng.random(B) < p``)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        flip = self.draw(len(x), rng)
        x = x.copy()
        x[flip] = x[flip, :, ::-1]
        return x

    def draw(self, b: int, rng: np.random.Generator) -> np.ndarray:
        """Which of ``b`` images to mirror, as ``__call__`` draws it."""
        return rng.random(b) < self.p

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply transforms in order, sharing one Generator."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


# -- RandAugment -------------------------------------------------------------------------------
def _blend(x: np.ndarray, other: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """``other + factor * (x - other)`` per image, clipped to uint8 (PIL's ImageEnhance)."""
    f = factor.reshape(-1, 1, 1, 1)
    out = other + f * (x.astype(np.float32) - other)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _gray(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]


def _affine(x: np.ndarray, m: np.ndarray, fill: int) -> np.ndarray:
    """Nearest-neighbour warp: output pixel p (centred coordinates, (x, y) order) reads the
    input at ``m[k] @ [p, 1]``; outside reads ``fill``. ``m`` is (K, 2, 3)."""
    k, h, w, _ = x.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    px, py = xx - cx, yy - cy
    sx = m[:, 0, 0, None, None] * px + m[:, 0, 1, None, None] * py + m[:, 0, 2, None, None] + cx
    sy = m[:, 1, 0, None, None] * px + m[:, 1, 1, None, None] * py + m[:, 1, 2, None, None] + cy
    sx, sy = np.rint(sx).astype(np.intp), np.rint(sy).astype(np.intp)
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    out = x[np.arange(k)[:, None, None], np.clip(sy, 0, h - 1), np.clip(sx, 0, w - 1)]
    out[~inside] = fill
    return out


def _op(name: str, x: np.ndarray, level: np.ndarray, fill: int) -> np.ndarray:
    """Apply op ``name`` to the batch ``x`` with signed levels in [-1, 1] (one per image)."""
    k, h, w, _ = x.shape
    if name == "identity":
        return x
    if name == "autocontrast":
        lo = x.min(axis=(1, 2), keepdims=True).astype(np.float32)
        hi = x.max(axis=(1, 2), keepdims=True).astype(np.float32)
        scale = np.where(hi > lo, 255.0 / np.maximum(hi - lo, 1), 1.0)
        lo = np.where(hi > lo, lo, 0)
        return np.clip(np.rint((x - lo) * scale), 0, 255).astype(np.uint8)
    if name == "brightness":
        return _blend(x, np.zeros((1, 1, 1, 1), np.float32), 1 + 0.9 * level)
    if name == "contrast":
        mean = _gray(x).mean(axis=(1, 2, 3), keepdims=True)
        return _blend(x, mean, 1 + 0.9 * level)
    if name == "color":
        return _blend(x, _gray(x), 1 + 0.9 * level)
    if name == "sharpness":
        xf = x.astype(np.float32)
        smooth = xf.copy()  # PIL's SMOOTH kernel [[1,1,1],[1,5,1],[1,1,1]]/13, borders kept
        acc = 4 * xf[:, 1:-1, 1:-1]
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                acc = acc + xf[:, 1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx]
        smooth[:, 1:-1, 1:-1] = acc / 13
        return _blend(x, smooth, 1 + 0.9 * level)
    if name == "solarize":
        threshold = (256 - 256 * np.abs(level)).reshape(-1, 1, 1, 1)
        return np.where(x >= threshold, 255 - x, x).astype(np.uint8)
    if name == "posterize":
        bits = 8 - (4 * np.abs(level)).astype(np.int64)  # keep 4..8 bits
        mask = (0xFF << (8 - bits)) & 0xFF
        return x & mask.astype(np.uint8).reshape(-1, 1, 1, 1)
    m = np.zeros((k, 2, 3), np.float32)
    m[:, 0, 0] = m[:, 1, 1] = 1
    if name == "translate_x":
        m[:, 0, 2] = -0.45 * w * level
    elif name == "translate_y":
        m[:, 1, 2] = -0.45 * h * level
    elif name == "shear_x":
        m[:, 0, 1] = 0.3 * level
    elif name == "shear_y":
        m[:, 1, 0] = 0.3 * level
    elif name == "rotate":
        a = np.deg2rad(30 * level)
        m[:, 0, 0], m[:, 0, 1] = np.cos(a), -np.sin(a)
        m[:, 1, 0], m[:, 1, 1] = np.sin(a), np.cos(a)
    else:
        raise ValueError(f"unknown RandAugment op {name!r}; known: {', '.join(RandAugment.OPS)}")
    return _affine(x, m, fill)


class RandAugment:
    """RandAugment (Cubuk et al. 2019): each image gets ``num_ops`` ops drawn uniformly from
    ``ops``, each at magnitude ``magnitude`` out of 10 (signed ops take a random sign).

    Levels at magnitude 10: brightness/contrast/color/sharpness factor 1 +- 0.9, solarize
    threshold 0, posterize to 4 bits, translate +-45 % of the side, shear +-0.3, rotate +-30
    degrees. Geometric ops use nearest-neighbour sampling and fill with ``fill``.
    """

    OPS = ("identity", "autocontrast", "brightness", "contrast", "color", "sharpness",
           "solarize", "posterize", "translate_x", "translate_y", "shear_x", "shear_y", "rotate")

    def __init__(self, num_ops: int = 2, magnitude: float = 9, ops: Sequence[str] | None = None,
                 fill: int = 128) -> None:
        self.num_ops, self.magnitude, self.fill = num_ops, magnitude, fill
        self.ops = tuple(ops) if ops is not None else self.OPS
        unknown = set(self.ops) - set(self.OPS)
        if unknown:
            raise ValueError(f"unknown RandAugment ops {sorted(unknown)}; known: {self.OPS}")

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = x.copy()
        for _ in range(self.num_ops):
            choice = rng.integers(0, len(self.ops), len(x))
            sign = np.where(rng.random(len(x)) < 0.5, -1.0, 1.0).astype(np.float32)
            level = sign * min(self.magnitude, 10) / 10
            for i, name in enumerate(self.ops):
                sel = np.flatnonzero(choice == i)
                if len(sel):
                    x[sel] = _op(name, x[sel], level[sel], self.fill)
        return x

    def __repr__(self) -> str:
        return f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude})"


def standard_augment(padding: int = 4) -> Compose:
    """The default CIFAR recipe: random crop with ``padding``-pixel zero padding, then flip."""
    return Compose([RandomCrop(32, padding), RandomHorizontalFlip()])


def make_augment(spec: bool | str | Transform | None) -> Transform | None:
    """``False``/``None``/``"none"`` -> no augmentation; ``True``/``"standard"`` -> crop + flip;
    ``"randaugment"`` -> crop + flip + RandAugment(2, 9); a callable is used as is."""
    if spec is None or spec is False or spec == "none":
        return None
    if spec is True or spec == "standard":
        return standard_augment()
    if spec == "randaugment":
        return Compose([*standard_augment().transforms, RandAugment(2, 9)])
    if callable(spec):
        return spec
    raise ValueError(f"unknown augment {spec!r}; use False, 'standard', 'randaugment' or a "
                     "callable(x_uint8_nhwc, rng)")


# -- to float, soft targets, mixing ------------------------------------------------------------
def to_float_nchw(
    x: np.ndarray,
    mean: Sequence[float] | None = CIFAR10_MEAN,
    std: Sequence[float] | None = CIFAR10_STD,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """uint8 ``(B, H, W, C)`` -> ``(x / 255 - mean) / std`` as C-contiguous ``(B, C, H, W)``.
    ``mean``/``std`` of None mean 0 and 1 (only the scaling to [0, 1])."""
    c = x.shape[-1]
    scale, shift = (a.reshape(c, 1, 1) for a in normalise_coefficients(c, mean, std, dtype))
    out = np.empty((x.shape[0], c, *x.shape[1:3]), dtype)
    out[...] = x.transpose(0, 3, 1, 2)
    out *= scale
    out += shift
    return out


def normalise_coefficients(c: int, mean: Sequence[float] | None, std: Sequence[float] | None,
                           dtype: np.dtype | type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, shift)`` of shape ``(c,)`` such that ``x * scale + shift`` is
    ``(x / 255 - mean) / std`` for uint8 pixel values ``x``."""
    mean_a = np.zeros(c) if mean is None else np.asarray(mean, np.float64)
    std_a = np.ones(c) if std is None else np.asarray(std, np.float64)
    return (1.0 / (255.0 * std_a)).astype(dtype), (-mean_a / std_a).astype(dtype)


def one_hot(y: np.ndarray, num_classes: int, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Integer labels ``(B,)`` -> one-hot ``(B, num_classes)``."""
    out = np.zeros((len(y), num_classes), dtype)
    out[np.arange(len(y)), y] = 1
    return out


def mixup(x: np.ndarray, targets: np.ndarray, alpha: float,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mix the batch with a random permutation of itself: ``lam ~ Beta(alpha, alpha)``, one per
    batch. Draws ``lam`` then the permutation."""
    lam = float(rng.beta(alpha, alpha))
    perm = rng.permutation(len(x))
    x_out = (lam * x + (1 - lam) * x[perm]).astype(x.dtype, copy=False)
    t_out = (lam * targets + (1 - lam) * targets[perm]).astype(targets.dtype, copy=False)
    return x_out, t_out


def cutmix_draw(b: int, h: int, w: int, alpha: float,
                rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """CutMix's draws: the partner permutation and the box ``(y0, y1, x0, x1)``."""
    lam = float(rng.beta(alpha, alpha))
    perm = rng.permutation(b)
    r = math.sqrt(1 - lam)
    ch, cw = int(h * r), int(w * r)
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    return perm, (y0, y1, x0, x1)


def cutmix(x: np.ndarray, targets: np.ndarray, alpha: float,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paste one random box (area about ``1 - lam``, ``lam ~ Beta(alpha, alpha)``) from a
    permutation of the batch; targets are weighted by the actual pasted area (NCHW input)."""
    h, w = x.shape[-2:]
    perm, (y0, y1, x0, x1) = cutmix_draw(len(x), h, w, alpha, rng)
    x_out = x.copy()
    x_out[..., y0:y1, x0:x1] = x[perm, ..., y0:y1, x0:x1]
    lam_area = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    t_out = (lam_area * targets + (1 - lam_area) * targets[perm]).astype(targets.dtype, copy=False)
    return x_out, t_out

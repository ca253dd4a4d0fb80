"""Small helpers the layers and the models share (timm's ``timm.layers.helpers`` names)."""
from __future__ import annotations

import math

__all__ = ["to_2tuple", "make_divisible", "same_padding", "check_input"]


def to_2tuple(v) -> tuple[int, int]:
    """``7`` -> ``(7, 7)``; a pair stays a pair (as ints)."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None,
                   round_limit: float = 0.9) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` (at least ``min_value``, default
    ``divisor``), going up one step when that would lose more than 10%: timm's rule for
    channel widths (``make_divisible(0.25 * 100) == 24``, ``make_divisible(30) == 32``)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < round_limit * v else new_v


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF 'SAME' padding of one axis, (before, after): the output has ceil(size / stride)
    positions and an odd total puts the extra pixel after (``(0, 1)`` for 32, 3x3, stride 2)."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def check_input(model_name: str, x, in_chans: int, img_size: tuple[int, int]) -> None:
    """Raise a ValueError naming the expected input when ``x`` is not (B, in_chans, H, W)."""
    expected = (in_chans, img_size[0], img_size[1])
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"{model_name} expects input (B, {expected[0]}, {expected[1]}, {expected[2]}), "
            f"got {tuple(x.shape)}")

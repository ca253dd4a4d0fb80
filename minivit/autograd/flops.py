"""Counting the model's FLOPs as the engine runs them (matmuls, einsums, convolutions).

    with count_flops() as c:
        model(x)
    c.total      # floating-point operations of the forward pass, 2 per multiply-add

Only the forward passes of the products are counted (a training step costs about three
times the forward). The ops call ``add_flops`` in their forward; it costs nothing when no
counter is active.
"""
from __future__ import annotations

_active: list["count_flops"] = []


class count_flops:
    """Context manager that sums the FLOPs of the products run inside it."""

    def __init__(self):
        self.total = 0

    def __enter__(self):
        _active.append(self)
        return self

    def __exit__(self, *exc):
        _active.remove(self)
        return False


def add_flops(n: int) -> None:
    for c in _active:
        c.total += int(n)

"""Fit the polynomial P of ``minivit/kernels/normal_cdf.py``'s (``normal_cdf_block``) Φ(x) = (1 + tanh(x P(x²))) / 2.

    python tools/fit_normal_cdf.py [--degree 6] [--limit 5.5]

The target is g(x) = atanh(2Φ(x) - 1) / x as a polynomial in u = x², on [0, limit] (beyond it
float32's Φ is 1 to within an ulp and tanh saturates anyway). An error δ in P moves Φ by
w(x) δ with w = (1 - tanh²) x / 2, so the fit is a least-squares fit weighted by w, then
Lawson's iteration (reweighting each point by its error) pushes it towards the minimax fit.
Prints the coefficients (highest power first) and Φ's largest error when evaluated in float32
as the fast GELU does, as the same number written as a sigmoid, 1 / (1 + exp(-2 x P(x²))).
"""
from __future__ import annotations

import argparse
import math

import numpy as np

from minivit.kernels.normal_cdf import _polynomial


def fit(degree: int, limit: float, iterations: int = 200) -> np.ndarray:
    x = np.linspace(1e-4, limit, 20001)
    t = np.array([math.erf(v / math.sqrt(2)) for v in x])      # 2Φ - 1
    g = np.arctanh(np.minimum(t, 1 - 1e-16)) / x
    w = np.maximum(0.5 * (1 - t * t) * x, 1e-12)                  # dΦ/dP
    v = np.vander(x * x, degree + 1)
    lawson = np.ones_like(x)
    for _ in range(iterations):
        s = w * np.sqrt(lawson)
        c = np.linalg.lstsq(v * s[:, None], g * s, rcond=None)[0]
        err = np.abs((v @ c - g) * w)
        lawson *= err
        lawson /= lawson.sum()
    return c


def float32_error(c: np.ndarray) -> float:
    x = np.linspace(-12, 12, 240001).astype(np.float32)
    # evaluated as the backend does: 1 / (1 + exp(x (-2P)(x²))), its own Horner loop
    p = _polynomial(x * x, tuple(-2.0 * float(ck) for ck in c))
    p *= x
    with np.errstate(over="ignore"):
        phi = np.float32(1) / (np.exp(p) + np.float32(1))
    want = np.array([0.5 * (1 + math.erf(float(v) / math.sqrt(2))) for v in x])
    return float(np.abs(phi - want).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--degree", type=int, default=6)
    ap.add_argument("--limit", type=float, default=5.5)
    args = ap.parse_args()
    c = fit(args.degree, args.limit)
    print("coefficients, highest power of u first:")
    print(", ".join(repr(float(ck)) for ck in c))
    print(f"min P(u) on u >= 0 (must be > 0): {np.polyval(c, np.geomspace(1e-9, 1e12, 10**5)).min():.6f}")
    print(f"largest float32 error of Φ on [-12, 12]: {float32_error(c):.2e}")


if __name__ == "__main__":
    main()

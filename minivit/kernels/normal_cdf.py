"""Fast float32 erf and Φ (the standard normal CDF), for GELU's fast body on the CPU.

The reference GELU computes Φ(x) = (1 + erf(x/√2)) / 2 with ``backend.erf`` (CPython's
algorithm in float64). These two approximations compute float32 blocks in a few passes:

- ``erf_float32``: the rational approximation erf(x) = x P(x²) / Q(x²) on [-4, 4] that Eigen
  and XLA use: a few float32 ulps, relative, down to tiny x (beyond |x| = 4 erf rounds to ±1).
- ``normal_cdf_block``: Φ(x) = (1 + tanh(x P(x²))) / 2 with P a degree-6 polynomial fitted to
  atanh(2Φ(x) - 1) / x, a smooth function of u = x² that starts at √(2/π) (GELU's tanh
  approximation is the degree-1 version, √(2/π) (1 + 0.044715 u)). The fit
  (``tools/fit_normal_cdf.py``: weighted least squares with Lawson's reweighting towards
  minimax, on [0, 5.5]) weighs each point by dΦ/dP, so the error is spread evenly over Φ. It
  is evaluated as the same number written as a logistic sigmoid, 1 / (1 + exp(-2 x P(x²))),
  with the -2 folded into P's coefficients (NumPy's float32 ``exp`` is cheaper than its
  ``tanh`` on AVX2 CPUs: docs/speed-history.md). No clip is needed: P(u) >= √(2/π) > 0, an
  infinite exp gives 1/inf = 0 (Φ = 0), an infinite z the other way exp = 0 (Φ = 1).

Accuracy against float64 erf (``tests/test_kernels.py`` checks both): Φ's largest error is
1.2e-7 (two float32 ulps below 1), and the fast float32 GELU x Φ(x) stays within 1e-6 absolute
of the float64 exact GELU for |x| <= 8 (within 2e-6 for |x| <= 16, where float32's own
rounding of y reaches 1e-6), its derivative within 1e-6 as well.
"""
from __future__ import annotations

import numpy as np

from ..autograd import backend
from . import parallel

_ERF32_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
            -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
            -1.60960333262415e-02)  # odd numerator, highest power first
_ERF32_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
            -7.37332916720468e-03, -1.42647390514189e-02)  # even denominator

_CDF32_TANH_P = (1.7561730925271752e-09, -1.3226341718551647e-07, 3.964745306000315e-06,
                 -5.530619808104247e-05, -3.259496629021904e-05, 0.036333084566528215,
                 0.7978849414618344)  # highest power of u = x² first
_CDF32_SIGMOID_P = tuple(-2.0 * c for c in _CDF32_TANH_P)   # -2 P: Φ = 1 / (1 + exp(x (-2P)))


def _polynomial(u, coeffs):
    """sum_k coeffs[k] u^(n-k) by Horner's rule, in place (new arrays are the cost here)."""
    p = u * coeffs[0]
    for c in coeffs[1:-1]:
        p += c
        p *= u
    p += coeffs[-1]
    return p


def _erf_block(x, out=None):
    xp = backend.get_array_module(x)
    z = xp.clip(x.reshape(-1), -4.0, 4.0)  # 1-d: arithmetic on 0-d arrays gives scalars
    z2 = z * z
    p, q = _polynomial(z2, _ERF32_P), _polynomial(z2, _ERF32_Q)
    p *= z
    if out is not None and out.dtype == np.float32 and out.flags.c_contiguous:
        xp.divide(p, q, out=out.reshape(-1))   # a view of out: the result lands in place
        return xp.clip(out, -1.0, 1.0, out=out)
    p /= q
    return xp.clip(p, -1.0, 1.0, out=p).astype(x.dtype, copy=False).reshape(x.shape)


def erf(x):
    """erf of an array: float32 on the CPU by the rational approximation, in blocks on all
    cores; float64 by ``backend.erf_float64`` in blocks; CuPy by ``backend.erf``."""
    if backend.device_of(x) == "cuda":
        return backend.erf(x)
    fn = _erf_block if x.dtype == np.float32 else backend.erf_float64
    return parallel.blockwise(fn, x.reshape(-1)).reshape(x.shape)


def normal_cdf_block(x, out=None):
    """Φ(x) of a float32 CPU block (into ``out`` if given) as 1 / (1 + exp(-2 x P(x²)));
    other dtypes and the GPU: (1 + erf(x/√2)) / 2."""
    xp = backend.get_array_module(x)
    if x.dtype != np.float32 or backend.device_of(x) != "cpu":
        y = backend.erf(x * (1 / np.sqrt(2.0)))
        y += 1
        y *= 0.5
        if out is None:
            return y
        out[...] = y
        return out
    with backend.overflow_to_inf():   # P(x²) overflows for |x| > ~9e3, exp for z < ~ -44:
        p = _polynomial(x * x, _CDF32_SIGMOID_P)   # Φ is still 1 or 0
        p *= x
        xp.exp(p, out=p)
    p += 1
    y = out if out is not None else xp.empty_like(x)
    return xp.divide(1.0, p, out=y)

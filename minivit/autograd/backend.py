"""The one module that imports NumPy or CuPy by name.

Everything else asks for ``xp = get_array_module(*arrays)`` and writes ``xp.exp(x)``, so the
same code runs on the CPU (NumPy) and on an NVIDIA GPU (CuPy). CuPy is optional and imported
lazily: ``import minivit`` works without it. The few operations that differ between the two
libraries (scatter-add, strided windows, erf, random numbers) are wrapped here once.
"""
from __future__ import annotations

import math

import numpy as np

DEVICES = ("cpu", "cuda")
GPU_INSTALL_HINT = (
    "install the GPU extra that matches your CUDA driver, which brings CuPy with the CUDA "
    "libraries it loads (NVRTC, cuBLAS, cuRAND), in your minivit clone: "
    "pip install -e \".[gpu]\" (CUDA 12) or pip install -e \".[gpu-cuda13]\" (CUDA 13)"
)

_cupy = None
_cupy_error: str | None = None


def _import_cupy():
    """Import CuPy once; remember why it failed so errors can say so."""
    global _cupy, _cupy_error
    if _cupy is None and _cupy_error is None:
        try:
            import cupy  # noqa: PLC0415 (lazy on purpose: CuPy is optional)

            _cupy = cupy
        except Exception as exc:  # ImportError, or a broken CUDA install
            _cupy_error = f"{type(exc).__name__}: {exc}"
        if _cupy is not None and _seed is not None:  # manual_seed ran before CuPy was loaded
            try:
                _cupy.random.seed(_seed)
            except Exception:  # no usable GPU: there is no GPU generator to seed
                pass
    return _cupy


_probed: dict = {}   # id(cupy module) -> "" (kernels run) or why not


def _probe_gpu(cp) -> str:
    """Run a tiny elementwise kernel (NVRTC), a matmul (cuBLAS) and a random draw (cuRAND)
    once: CuPy 14 wheels bundle none of these libraries, so a machine with only the driver
    sees a GPU yet fails at the first kernel. Returns "" or why it failed."""
    key = id(cp)
    if key not in _probed:
        try:
            a = cp.arange(4, dtype=cp.float32).reshape(2, 2)
            b = a * 2 + 1
            c = cp.matmul(a, b)
            r = cp.random.RandomState(0).random_sample((2,), dtype=cp.float32)
            float(c.sum() + r.sum())
            _probed[key] = ""
        except Exception as exc:  # libnvrtc / libcublas / libcurand missing, driver too old
            msg = " ".join(str(exc).split())[:200]
            _probed[key] = (f"CuPy sees a GPU but cannot run kernels on it "
                            f"({type(exc).__name__}: {msg}); {GPU_INSTALL_HINT}")
    return _probed[key]


def is_cupy_available() -> bool:
    """True when CuPy imports, sees at least one GPU and can run kernels on it (checked once
    with a tiny elementwise op, a matmul and a random draw)."""
    return _import_cupy() is not None and cuda_unavailable_reason() == ""


def cuda_unavailable_reason() -> str:
    """A one-line explanation of why ``device="cuda"`` cannot be used here ("" if it can)."""
    cp = _import_cupy()
    if cp is None:
        return f"CuPy is not installed ({_cupy_error}); {GPU_INSTALL_HINT}"
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"CuPy is installed but no NVIDIA GPU is usable ({type(exc).__name__}: {exc})"
    if n == 0:
        return "CuPy is installed but no NVIDIA GPU was found"
    return _probe_gpu(cp)


def set_tf32(on: bool) -> None:
    """TF32 for float32 matrix products on the GPU (cuBLAS on NVIDIA Ampere and newer: inputs
    rounded to a 10-bit mantissa, float32 accumulation; about 1e-3 relative error, several
    times the speed). NumPy has no TF32: on the CPU this changes nothing."""
    cp = _import_cupy()
    if cp is None:
        return
    linalg = cp._core._routines_linalg
    linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if on
                            else linalg.COMPUTE_TYPE_DEFAULT)


def check_device(device: str) -> str:
    """Validate a device name; raise a clear error for an unknown or unusable one."""
    if not isinstance(device, str) or device.split(":")[0] not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected 'cpu' or 'cuda'")
    device = device.split(":")[0]
    if device == "cuda" and not is_cupy_available():
        raise RuntimeError(f"device 'cuda' is not available: {cuda_unavailable_reason()}")
    return device


def get_array_module(*arrays):
    """``numpy`` or ``cupy``, whichever owns the given arrays (numpy when none is CuPy)."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def device_of(array) -> str:
    return "cuda" if _cupy is not None and isinstance(array, _cupy.ndarray) else "cpu"


def to_device(array, device: str):
    """Move an array to ``"cpu"`` or ``"cuda"`` (a no-op when it is already there)."""
    device = check_device(device)
    if device == device_of(array):
        return array
    if device == "cuda":
        return _cupy.asarray(array)
    return _cupy.asnumpy(array)


def as_numpy(array) -> np.ndarray:
    """Always a NumPy array (copies from the GPU when needed)."""
    if device_of(array) == "cuda":
        return _cupy.asnumpy(array)
    return np.asarray(array)


def is_array(obj) -> bool:
    return isinstance(obj, np.ndarray) or (_cupy is not None and isinstance(obj, _cupy.ndarray))


def scatter_add(target, indices, values) -> None:
    """``target[indices] += values`` where repeated indices accumulate (unbuffered add)."""
    if device_of(target) == "cuda":
        import cupyx  # noqa: PLC0415

        cupyx.scatter_add(target, indices, values)
    else:
        np.add.at(target, indices, values)


def as_strided(x, shape, strides, writeable: bool = False):
    """A strided view of ``x`` (no copy). Used by im2col, pooling and ``rel_to_abs``; read-only
    on the CPU unless ``writeable`` (a view whose elements overlap must never be written)."""
    if device_of(x) == "cuda":
        return _cupy.lib.stride_tricks.as_strided(x, shape=shape, strides=strides)
    return np.lib.stride_tricks.as_strided(x, shape=shape, strides=strides, writeable=writeable)


def overflow_to_inf():
    """A context in which a float overflow gives inf without a warning (NumPy's ``errstate``;
    CuPy never warns): for formulas whose inf is the right limit, such as 1 / (1 + exp(z))."""
    return np.errstate(over="ignore")


# --- erf ---------------------------------------------------------------------------------
# NumPy has no erf. We follow CPython's math.erf, in float64 whatever the input's dtype (the
# result is then rounded to it): a power series near 0, a continued fraction for erfc further
# out, accurate to a few ulps. The fast float32 version is ``minivit/kernels/normal_cdf.py``.

def erf_float64(x: np.ndarray) -> np.ndarray:
    """erf of a float64 NumPy array (CPython's algorithm, vectorised)."""
    ax = np.abs(x)
    out = np.empty_like(x)
    small = ax < 1.5
    if small.any():  # erf(x) = 2x/sqrt(pi) exp(-x^2) sum_k (2x^2)^k / (1*3*...*(2k+1))
        xs = ax[small]
        x2 = xs * xs
        acc = np.zeros_like(xs)
        fk = 25 + 0.5
        for _ in range(25):
            acc = 2.0 + x2 * acc / fk
            fk -= 1.0
        out[small] = acc * xs * np.exp(-x2) / math.sqrt(math.pi)
    big = ~small
    if big.any():  # erfc(x) by its continued fraction, evaluated forward (CPython's m_erfc_contfrac)
        xb = np.minimum(ax[big], 30.0)  # erfc(30) underflows to 0 anyway
        x2 = xb * xb
        a = 0.0
        da = 0.5
        p, p_last = np.ones_like(xb), np.zeros_like(xb)
        q, q_last = da + x2, np.ones_like(xb)
        for _ in range(50):
            a += da
            da += 2.0
            b = da + x2
            p, p_last = b * p - a * p_last, p
            q, q_last = b * q - a * q_last, q
        erfc = p / q * xb * np.exp(-x2) / math.sqrt(math.pi)
        out[big] = 1.0 - erfc
    return np.copysign(out, x)


def erf(x):
    """Elementwise error function of an array, rounded to its dtype."""
    if device_of(x) == "cuda":
        import cupyx.scipy.special  # noqa: PLC0415

        return cupyx.scipy.special.erf(x)
    return erf_float64(np.asarray(x, dtype=np.float64)).astype(x.dtype, copy=False)


# --- random numbers ----------------------------------------------------------------------
# One generator per device, seeded by ``minivit.manual_seed``; both states go in checkpoints.
# cuRAND's state cannot be read back, so the GPU generator's state is two integers, the seed
# and the number of draws so far: draw n comes from a Philox generator keyed by (seed, n)
# (counter-based, so re-keying costs no state set-up kernel). A resumed run restores both
# and its dropout and drop-path masks continue exactly where they left off.

_np_rng = np.random.default_rng(0)
_seed: int | None = None  # the last manual_seed, for a CuPy imported after it
_CURAND_PHILOX = 161  # CURAND_RNG_PSEUDO_PHILOX4_32_10 (curand.h)


class CudaGenerator:
    """``cupy.random``'s draws behind a state of two integers (see above)."""

    def __init__(self, seed: int = 0, draws: int = 0):
        self.seed, self.draws = int(seed), int(draws)
        self._rs = None

    def _next(self):
        if self._rs is None:
            self._rs = _cupy.random.RandomState(0, method=_CURAND_PHILOX)
        key = np.random.SeedSequence([self.seed, self.draws]).generate_state(1, np.uint64)[0]
        self._rs.seed(int(key))
        self.draws += 1
        return self._rs

    def random_sample(self, size=None, dtype=np.float64):
        return self._next().random_sample(size=size, dtype=dtype)

    random = random_sample

    def standard_normal(self, size=None, dtype=np.float64):
        return self._next().standard_normal(size=size, dtype=dtype)

    def get_state(self) -> dict:
        return {"seed": self.seed, "draws": self.draws}


_cuda_gen = CudaGenerator(0)


def manual_seed(seed: int) -> None:
    """Seed minivit's random generators (CPU, and the GPU now or when CuPy is first loaded)."""
    global _np_rng, _seed, _cuda_gen
    _np_rng = np.random.default_rng(seed)
    _cuda_gen = CudaGenerator(seed)
    _seed = seed
    if _cupy is not None:
        _cupy.random.seed(seed)


def rng(device: str = "cpu"):
    """The generator for ``device``: a NumPy ``Generator`` or a ``CudaGenerator``."""
    if device == "cuda":
        return _cuda_gen
    return _np_rng


def get_rng_state() -> dict:
    return {"numpy": _np_rng.bit_generator.state, "cuda": _cuda_gen.get_state()}


def set_rng_state(state: dict) -> None:
    global _cuda_gen
    _np_rng.bit_generator.state = state["numpy"]
    if "cuda" in state:   # checkpoints from before issue 29 have only the NumPy state
        _cuda_gen = CudaGenerator(int(state["cuda"]["seed"]), int(state["cuda"]["draws"]))

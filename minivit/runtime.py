"""Process tuning for training: the allocator and OpenBLAS settings the ``minivit`` command
applies. ``import minivit`` changes nothing; call ``minivit.runtime.tune()`` yourself to get
the same settings in your own script::

    import minivit.runtime
    minivit.runtime.tune()          # before building the model

- **Allocator** (glibc): training allocates and frees the same large activations every step.
  glibc serves blocks above its mmap threshold (at most 32 MB) with fresh mmaps and unmaps
  them on free, so every step page-faults its activations in again: up to half of a step's
  time for conv models. ``tune`` keeps all blocks on the heap and never trims it, so the
  memory is reused instead. ``MINIVIT_MALLOC_TUNING=0`` leaves the allocator alone.
- **OpenBLAS**: its worker threads busy-wait for 2^28 cycles (about 0.1 s) after every matrix
  product before they sleep, so on a small machine they take the cores that minivit's own
  threads (``minivit/kernels/parallel.py``) need between two GEMMs. ``OPENBLAS_THREAD_TIMEOUT=4``
  (2^4 cycles) makes them sleep at once: training steps 5-10% faster on 2 cores. OpenBLAS
  reads it once, when NumPy loads, so ``tune`` can only report it when NumPy is already
  loaded; the ``minivit`` command sets it before (``cli.main``). Set the variable yourself to
  override it.
- **Threads and blocks**: ``MINIVIT_NUM_THREADS`` (default: the CPUs this process may use; 0
  turns the blocked and threaded CPU code off) and ``MINIVIT_BLOCK_ELEMENTS`` (default 2^18,
  1 MB of float32 per operand block) are read by
  ``minivit/kernels/parallel.py`` when it is imported.
"""
from __future__ import annotations

import ctypes
import os
import sys

OPENBLAS_TIMEOUT = "4"


def tune_malloc() -> bool:
    """Keep freed memory for reuse (glibc only); True when the settings took."""
    if os.environ.get("MINIVIT_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, ...)
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
    ok = libc.mallopt(M_MMAP_MAX, 0)  # no mmap for big blocks: they stay on the heap
    ok &= libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # never give the heap top back
    ok &= libc.mallopt(M_TOP_PAD, 64 << 20)  # grow the heap in 64 MB steps
    return bool(ok)


def ranks_on_this_machine() -> int:
    """How many MPI ranks a launcher started on this machine (MPICH's Hydra, Open MPI); 1
    when not started by one."""
    for name in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def set_blas_env(numpy_loaded: bool | None = None) -> bool:
    """Set OPENBLAS_THREAD_TIMEOUT (unless already set); True when it will take effect, i.e.
    NumPy is not loaded yet or the variable was set before it was. Under ``mpiexec`` with k
    ranks on this machine, each rank also gets 1/k of the cores for OpenBLAS and minivit's
    threads (OPENBLAS_NUM_THREADS, MINIVIT_NUM_THREADS, unless set)."""
    numpy_loaded = "numpy" in sys.modules if numpy_loaded is None else numpy_loaded
    local = ranks_on_this_machine()
    if local > 1 and not numpy_loaded:
        share = str(max(1, len(os.sched_getaffinity(0)) // local)
                    if hasattr(os, "sched_getaffinity") else 1)
        os.environ.setdefault("OPENBLAS_NUM_THREADS", share)
        os.environ.setdefault("MINIVIT_NUM_THREADS", share)
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return True
    if not numpy_loaded:
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = OPENBLAS_TIMEOUT
        return True
    return False


_tuned: dict | None = None


def tune() -> dict:
    """Apply the allocator and OpenBLAS settings once; returns what took effect:
    ``{"malloc": bool, "openblas_thread_timeout": bool}``."""
    global _tuned
    if _tuned is None:
        _tuned = {"openblas_thread_timeout": set_blas_env(), "malloc": tune_malloc()}
    return dict(_tuned)


def reexec_with_blas_env() -> None:
    """For the ``minivit`` command: if NumPy is already loaded without
    OPENBLAS_THREAD_TIMEOUT (``python -m minivit`` and the console script both import minivit,
    hence NumPy, before ``main`` runs), set it and restart this same command once, so that
    OpenBLAS reads it. ``MINIVIT_NO_REEXEC=1`` (or setting the variable yourself) skips it."""
    if ("OPENBLAS_THREAD_TIMEOUT" in os.environ or os.environ.get("MINIVIT_NO_REEXEC")
            or "numpy" not in sys.modules):
        set_blas_env()
        return
    set_blas_env(numpy_loaded=False)   # for the new process, which loads NumPy afresh
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "minivit", *sys.argv[1:]])

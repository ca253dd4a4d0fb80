"""Shared test setup: the hypothesis profile and the backend parametrisation."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import minivit
from minivit.autograd import backend

# Bounded, derandomised examples: the same inputs every run, no flaky deadlines on a busy CI box.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# The CUDA case runs on a real GPU where CuPy sees one, and otherwise on the strict CuPy
# stand-in (tests/cupy_standin): the test id says which, ``[cuda-gpu]`` or ``[cuda-standin]``.
# MINIVIT_CUDA_STANDIN=0 skips the CUDA case instead where there is no GPU.
REAL_GPU = backend.is_cupy_available()
CUDA_ID = "cuda-gpu" if REAL_GPU else "cuda-standin"
STANDIN_ON = os.environ.get("MINIVIT_CUDA_STANDIN", "1") != "0"


@pytest.fixture
def cuda_backend():
    """Yields the ``cupy`` module in use for a CUDA test: the real one or the stand-in
    (installed for the test's duration, so CPU tests never see it)."""
    if REAL_GPU:
        yield backend._import_cupy()
        return
    if not STANDIN_ON:
        pytest.skip(f"no GPU ({backend.cuda_unavailable_reason()}) and MINIVIT_CUDA_STANDIN=0")
    import cupy_standin  # noqa: PLC0415

    yield cupy_standin.install()
    cupy_standin.uninstall()


@pytest.fixture
def standin(cuda_backend):
    """The stand-in module, for tests of the stand-in itself or of what its counters count
    (launches, copies, synchronisations); skipped where a real GPU is in use."""
    if not getattr(cuda_backend, "STANDIN", False):
        pytest.skip("a real GPU is in use: this test checks the stand-in or counts with it")
    return cuda_backend


@pytest.fixture(params=[pytest.param("cuda", marks=pytest.mark.gpu, id=CUDA_ID)])
def cuda(request):
    """For tests that only run on the GPU: ``"cuda"``, with CuPy or the stand-in in place."""
    request.getfixturevalue("cuda_backend")
    return request.param


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu, id=CUDA_ID)])
def device(request):
    """Run a test on each backend (see ``cuda_backend`` for what CUDA means here)."""
    if request.param == "cuda":
        request.getfixturevalue("cuda_backend")
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    minivit.manual_seed(0)
    np.random.seed(0)

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


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    """Run a test on each backend; the CUDA case skips cleanly without CuPy or a GPU."""
    if request.param == "cuda" and not backend.is_cupy_available():
        pytest.skip(f"no GPU: {backend.cuda_unavailable_reason()}")
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    minivit.manual_seed(0)
    np.random.seed(0)

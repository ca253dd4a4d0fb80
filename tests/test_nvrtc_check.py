"""``tools/nvrtc_check.py`` compiles every CUDA kernel of minivit: the RawKernels, the fused
ElementwiseKernels and ReductionKernels, and the data kernels that build a batch on the GPU.
The compilation itself needs NVRTC (``pip install nvidia-cuda-nvrtc-cu12``) and is skipped
where it is not installed; which kernels it covers is checked everywhere."""
import sys
from pathlib import Path

import pytest

from minivit.data import gpu as data_gpu

import cupy_standin  # noqa: F401 (registers the RawKernels' twins)
from cupy_standin import _kernel

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def nvrtc_check():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import nvrtc_check  # noqa: PLC0415
    finally:
        sys.path.pop(0)
    return nvrtc_check


def test_covers_every_raw_kernel_and_every_data_kernel(nvrtc_check):
    raw = {name for _, name in nvrtc_check.raw_kernels()}
    assert raw == set(_kernel.RAW_KERNELS)   # every RawKernel the stand-in knows (all of them)
    assert {"minivit_depthwise_fwd", "minivit_depthwise_bwd_input",
            "minivit_depthwise_bwd_weight"} <= raw
    data = {k["name"] for k in nvrtc_check.data_kernels()}
    assert data == {spec[3] for spec in data_gpu.SPECS.values()} == {
        "minivit_data_batch", "minivit_data_targets"}
    fused = {k["name"] for k in nvrtc_check.elementwise_kernels()}
    assert {"minivit_adam", "minivit_gelu_exact_fwd", "minivit_one_hot_targets"} <= fused


def test_data_kernel_parameters_get_their_c_types(nvrtc_check):
    k = next(k for k in nvrtc_check.data_kernels() if k["name"] == "minivit_data_batch")
    src = nvrtc_check.elementwise_source(k, "float")
    assert "const unsigned char * X" in src and "const long long * P" in src
    assert "int pad" in src and "float & out" in src and "float wa_out" in src


def test_every_kernel_compiles(nvrtc_check, capsys):
    try:
        nvrtc_check._libnvrtc()
    except OSError:
        pytest.skip("NVRTC is not installed (pip install nvidia-cuda-nvrtc-cu12)")
    assert nvrtc_check.main(["--arch", "compute_80"]) == 0, capsys.readouterr().out

"""Bad input gets a clear error: what was wrong, the op or call, and what was expected."""
import sys
import types

import numpy as np
import pytest

import minivit
from minivit.autograd import backend


def leaf(shape, dtype=np.float32):
    return minivit.tensor(np.ones(shape, dtype=dtype), requires_grad=True)


def test_matmul_shape_mismatch_names_both_shapes_and_the_op():
    with pytest.raises(ValueError) as e:
        leaf((2, 3)) @ leaf((4, 5))
    msg = str(e.value)
    assert msg.startswith("matmul: ") and msg.count("matmul:") == 1, msg
    assert "(2, 3)" in msg and "(4, 5)" in msg and "3" in msg and "4" in msg
    with pytest.raises(ValueError, match=r"matmul: .*\(3,\).*\(4,\)"):
        minivit.matmul(leaf(3), leaf(4))
    with pytest.raises(ValueError, match=r"matmul: .*\(2, 2, 3\).*\(3, 3, 4\)"):
        minivit.matmul(leaf((2, 2, 3)), leaf((3, 3, 4)))  # batch dims 2 and 3
    with pytest.raises(ValueError, match=r"matmul: both operands need at least one dimension"):
        minivit.matmul(leaf(()), leaf(3))


@pytest.mark.parametrize("op, name", [(lambda a, b: a + b, "add"), (lambda a, b: a - b, "sub"),
                                      (lambda a, b: a * b, "mul"), (minivit.maximum, "maximum"),
                                      (minivit.div, "div")])
def test_broadcast_mismatch_names_both_shapes_and_the_op(op, name):
    with pytest.raises(ValueError, match=rf"^{name}: .*\(2, 3\), \(4, 5\)"):
        op(leaf((2, 3)), leaf((4, 5)))


def test_backward_on_non_scalar_without_gradient():
    y = leaf((2, 3)) * 2.0
    with pytest.raises(RuntimeError, match=r"backward\(\) without a gradient needs a scalar "
                                           r"output; this one has shape \(2, 3\)"):
        y.backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\), expected \(2, 3\)"):
        y.backward(np.ones(3))


def test_backward_without_requires_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        minivit.tensor([1.0, 2.0]).sum().backward()


def test_second_backward_through_a_freed_graph_names_the_op():
    x = leaf(3)
    y = x.exp()
    y.sum().backward()
    with pytest.raises(RuntimeError, match=r"second time.*'exp'.*retain_graph=True"):
        (y * 2.0).sum().backward()  # the new mul is fine; exp's saved arrays are gone
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match=r"'sum'.*retain_graph=True"):
        loss.backward()


def test_requires_grad_on_an_integer_tensor():
    with pytest.raises(TypeError, match=r"only floating-point tensors can require gradients; "
                                        r"this one is int64"):
        minivit.tensor([1, 2, 3], requires_grad=True)
    with pytest.raises(TypeError, match=r"bool"):
        minivit.tensor([True]).requires_grad_()


def test_different_float_dtypes_in_one_op():
    with pytest.raises(TypeError, match=r"add: tensors of different float dtypes "
                                        r"\['float32', 'float64'\]; convert one"):
        leaf(3) + leaf(3, np.float64)
    with pytest.raises(TypeError, match=r"concatenate: .*float16.*float32"):
        minivit.cat([leaf(3), leaf(3, np.float16)])


def test_tensors_on_two_devices_in_one_op(monkeypatch):
    """Simulated: one array reports 'cuda' (the CuPy case, without needing a GPU)."""
    a, b = leaf(3), leaf(3)
    on_gpu = id(b.data)
    real = backend.device_of
    monkeypatch.setattr(backend, "device_of",
                        lambda arr: "cuda" if id(arr) == on_gpu else real(arr))
    assert b.device == "cuda" and a.device == "cpu"
    with pytest.raises(RuntimeError, match=r"mul: tensors on different devices \['cpu', 'cuda'\]"
                                           r"; move them to one device"):
        a * b
    with pytest.raises(RuntimeError, match=r"matmul: tensors on different devices"):
        a @ b


def _no_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_error", None)


def _cupy_without_gpu(monkeypatch, count=None):
    def get_device_count():
        if count is None:
            raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
        return count

    fake = types.ModuleType("cupy")
    fake.ndarray = type("ndarray", (), {})
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(
        getDeviceCount=get_device_count))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_error", None)


def test_to_cuda_without_cupy_says_how_to_install(monkeypatch):
    _no_cupy(monkeypatch)
    assert not backend.is_cupy_available()
    t = minivit.tensor([1.0])
    for make in (lambda: t.to("cuda"), lambda: t.cuda(), lambda: minivit.zeros(2, device="cuda"),
                 lambda: minivit.tensor([1.0], device="cuda")):
        with pytest.raises(RuntimeError) as e:
            make()
        msg = str(e.value)
        assert "device 'cuda' is not available: CuPy is not installed" in msg
        assert 'pip install -e ".[gpu]"' in msg and 'pip install -e ".[gpu-cuda13]"' in msg


@pytest.mark.parametrize("count, says", [(None, "no NVIDIA GPU is usable (RuntimeError: "
                                                "cudaErrorNoDevice"),
                                         (0, "no NVIDIA GPU was found")])
def test_to_cuda_with_cupy_but_no_gpu(monkeypatch, count, says):
    _cupy_without_gpu(monkeypatch, count)
    assert not backend.is_cupy_available()
    with pytest.raises(RuntimeError, match=r"device 'cuda' is not available: CuPy is installed") \
            as e:
        minivit.tensor([1.0]).to("cuda")
    assert says in str(e.value)
    assert "not installed" not in str(e.value)


def test_unknown_device():
    with pytest.raises(ValueError, match=r"unknown device 'tpu'; expected 'cpu' or 'cuda'"):
        minivit.tensor([1.0], device="tpu")
    with pytest.raises(ValueError, match="unknown device"):
        minivit.zeros(2, device="gpu")


def test_op_argument_errors():
    x = leaf(3)
    with pytest.raises(ValueError, match=r"gelu: approximate must be 'none' or 'tanh', got 'erf'"):
        minivit.gelu(x, approximate="erf")
    with pytest.raises(ValueError, match=r"clip: give at least one of lo, hi"):
        minivit.clip(x)
    with pytest.raises(TypeError, match=r"where: at least one of a, b must be a Tensor"):
        minivit.where(np.array([True]), 1.0, 2.0)
    with pytest.raises(ValueError, match=r"item\(\) needs a tensor with one element.*\(3,\)"):
        x.item()
    with pytest.raises(ValueError, match=r"truth value of a tensor of shape \(3,\) is ambiguous"):
        bool(x > 0)

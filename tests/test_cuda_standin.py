"""The strict CuPy stand-in (``tests/cupy_standin``) is strict, and catches what it is for.

Where a real GPU is at hand the ``cuda`` fixture gives real CuPy and the stand-in's own checks
skip; the planted-bug tests then run the GPU path itself.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minivit
import minivit.nn.functional as F
from minivit import nn, optim
from minivit.models import create_model
from minivit.autograd import backend

import cupy_standin

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_arrays_are_not_numpy_arrays(standin):
    a = standin.asarray(np.arange(6, dtype=np.float32))
    assert not isinstance(a, np.ndarray)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
        np.asarray(a)
    with pytest.raises(TypeError):
        np.exp(a)                 # a NumPy ufunc on a GPU array
    with pytest.raises(TypeError, match="NumPy function"):
        np.sum(a)                 # a NumPy function on a GPU array
    np.testing.assert_array_equal(a.get(), np.arange(6))


def test_mixed_operands_are_refused(standin):
    a = standin.asarray(np.ones(3, np.float32))
    host = np.ones(3, np.float32)
    for mix in (lambda: a + host, lambda: host * a, lambda: standin.add(a, host),
                lambda: standin.matmul(host, a), lambda: standin.where(a > 0, a, host)):
        with pytest.raises(TypeError, match="Unsupported type"):
            mix()
    assert float((a * np.float32(2) + 1.5).sum()) == 10.5   # scalars are fine


def test_only_names_real_cupy_has(standin):
    assert cupy_standin.VERSION.startswith("14.")
    assert standin.exp and standin.cuda.runtime.getDeviceCount() == 1
    for missing in ("erf", "add_at", "float128"):   # NumPy or SciPy names CuPy lacks
        with pytest.raises(AttributeError, match="not in CuPy 14"):
            getattr(standin, missing)
    a = standin.zeros(3)
    with pytest.raises(AttributeError, match="no attribute 'tofile_x'"):
        a.tofile_x   # noqa: B018
    with pytest.raises(AttributeError):
        a.__index__   # noqa: B018  (CuPy arrays are no indices: range(gpu_scalar) fails)


def test_elementwise_kernels_follow_c_type_rules(standin):
    x = standin.asarray(np.float32([0.1, 1.7, -3.3]))
    double = standin.ElementwiseKernel("T x", "T y", "y = x * 0.1", "double_literal")(x)
    single = standin.ElementwiseKernel("T x", "T y", "y = x * (T)0.1", "cast_literal")(x)
    xh = np.float32([0.1, 1.7, -3.3])
    np.testing.assert_array_equal(double.get(), (xh.astype(np.float64) * 0.1).astype(np.float32))
    np.testing.assert_array_equal(single.get(), xh * np.float32(0.1))
    with pytest.raises(TypeError, match="Type is mismatched"):
        standin.ElementwiseKernel("T a, T b", "T c", "c = a + b", "k")(
            x, standin.zeros(3, dtype=np.float64))
    with pytest.raises(TypeError, match="Unsupported type"):
        standin.ElementwiseKernel("T a", "T c", "c = a", "k")(xh)
    red = standin.ReductionKernel("T a, T b", "T out", "a * b", "a + b", "out = a", "0", "dot")
    assert float(red(x, x)) == pytest.approx(float((xh * xh).sum()), rel=1e-6)


def test_counters(standin):
    a = standin.asarray(np.ones((4, 8), np.float32))
    with cupy_standin.counting() as c:
        b = a + 1                  # 1 launch
        b.reshape(8, 4).T          # views: none
        standin.empty((3,))        # allocation: none
        b.sum(axis=1)              # 1 reduction
        b.item(0)                  # a copy to the host and a synchronisation
        standin.asarray(np.ones(2))  # a copy to the device
    assert (c["launches"], c["d2h"], c["h2d"], c["syncs"]) == (2, 1, 1, 1)
    with pytest.raises(cupy_standin.SyncError, match="inside a training step"), \
            cupy_standin.no_sync():
        bool(b.any())


def test_streams_events_and_pinned_memory(standin):
    """Streams and events offer only real CuPy's names; a pinned upload on a side stream is
    counted as such, and reading it needs an event between the streams."""
    for cls, key in ((standin.cuda.Stream, "Stream"), (standin.cuda.Event, "Event")):
        public = {n for n in dir(cls) if not n.startswith("_")}
        assert public <= set(cupy_standin.NAMES["classes"][key]), (key, public)
    host = __import__("cupyx").empty_pinned((2, 3), np.float32)
    assert type(host) is np.ndarray
    host[...] = 1
    dev = standin.empty((2, 3), np.float32)
    with pytest.raises(TypeError, match="float64 array cannot be set to float32"):
        dev.set(np.ones((2, 3)))
    with pytest.raises(ValueError, match="Shape mismatch"):
        dev.set(np.ones(6, np.float32))
    side = standin.cuda.Stream(non_blocking=True)
    with cupy_standin.counting() as c:
        dev.set(host, stream=side)
        dev2 = standin.empty((2, 3), np.float32)
        dev2.set(np.ones((2, 3), np.float32))     # pageable, on the default stream
    assert (c["h2d"], c["h2d_pinned"], c["h2d_async"], c["syncs"]) == (2, 1, 1, 0)
    with pytest.raises(cupy_standin.StreamOrderError, match="not ordered before"):
        dev * 2
    copied = standin.cuda.Event()
    copied.record(side)
    assert copied.done    # a query, no synchronisation
    standin.cuda.get_current_stream().wait_event(copied)
    np.testing.assert_array_equal((dev * 2).get(), np.full((2, 3), 2, np.float32))
    with pytest.raises(cupy_standin.StreamOrderError, match="may still be reading"):
        dev.set(host, stream=side)   # the kernel above read dev: the side stream must wait
    side.wait_event(standin.cuda.get_current_stream().record())
    dev.set(host, stream=side)
    with cupy_standin.counting() as c:
        copied.synchronize()
    assert c["syncs"] == 1


# --- the stand-in catches the bugs it is for ---------------------------------------------------

def _tiny_step(device, model=None):
    """Forward, loss, backward and an AdamW step of a small ViT on ``device``."""
    model = model or create_model(
        "vit_cifar", depth=1, embed_dim=32, num_heads=2).to(device)
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    x = backend.to_device(np.random.default_rng(0).standard_normal((4, 3, 32, 32))
                          .astype(np.float32), device)
    y = backend.to_device(np.arange(4), device)
    loss = F.cross_entropy(model(minivit.Tensor(x)), minivit.Tensor(y))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def test_a_planted_host_device_mixup_fails(cuda, monkeypatch):
    _tiny_step(cuda)   # the real code runs
    real = F.layer_norm

    def mixed(x, shape, weight=None, bias=None, eps=1e-5):   # a host array slipped in
        y = real(x, shape, weight, bias, eps)
        return y * minivit.Tensor(np.ones(shape, dtype=np.float32))

    monkeypatch.setattr(F, "layer_norm", mixed)
    monkeypatch.setattr(nn.layers.F, "layer_norm", mixed, raising=False)
    with pytest.raises((TypeError, RuntimeError)):
        _tiny_step(cuda)


def test_a_planted_numpy_call_on_a_gpu_array_fails(cuda, monkeypatch):
    from minivit.nn.functional import loss  # noqa: PLC0415

    _tiny_step(cuda)
    monkeypatch.setattr(loss, "xp_of", lambda *a: np)   # an "xp" that is always NumPy
    with pytest.raises(TypeError):
        _tiny_step(cuda)


def test_a_planted_sync_inside_a_step_fails(standin, monkeypatch):
    with cupy_standin.no_sync():   # the real step: no synchronisation (issue 29 item 6)
        _tiny_step("cuda")
    real = F.cross_entropy

    def checked(logits, target, **kw):   # the kind of check item 6 took out of the step
        loss = real(logits, target, **kw)
        if not np.isfinite(loss.item()):
            raise RuntimeError("nan")
        return loss

    monkeypatch.setattr(F, "cross_entropy", checked)
    with pytest.raises(cupy_standin.SyncError), cupy_standin.no_sync():
        _tiny_step("cuda")


def test_gpu_marker_selects_the_cuda_kernel_tests():
    """Issue 29 item 4: ``pytest -m gpu`` runs test_cuda_kernels.py's GPU tests."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu",
                          "-p", "no:cacheprovider", "tests/test_cuda_kernels.py"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120).stdout
    ids = [ln for ln in out.splitlines() if "::" in ln]
    assert len(ids) >= 40 and all("cuda-" in i for i in ids), out[-2000:]


def test_minivit_train_on_the_gpu_path(cuda, tmp_path, capsys):
    """``minivit train --device cuda`` for one short epoch, then ``minivit eval`` of its run:
    on a real GPU where there is one, on the stand-in in CI."""
    from minivit import cli  # noqa: PLC0415

    tiny = ["--model", "vit_cifar", "--model-arg", "depth=1", "--model-arg", "embed_dim=32",
            "--model-arg", "num_heads=2", "--batch-size", "32", "--train-limit", "64",
            "--test-limit", "64", "--no-progress", "--epochs", "1"]
    run = tmp_path / "run"
    assert cli.main(["train", *tiny, "--device", "cuda", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "on cuda" in out and (run / "last.npz").exists()
    assert cli.main(["eval", str(run), "--device", "cuda", "--limit", "32"]) == 0


# --- issue 29 items 3 and 5 ------------------------------------------------------------------

def test_a_gpu_that_cannot_run_kernels_gets_the_install_hint(monkeypatch):
    """Item 3: CuPy 14 sees the GPU through the driver alone; the first kernel then needs
    NVRTC (cuBLAS, cuRAND). is_cupy_available() runs one of each before anything starts."""
    import types  # noqa: PLC0415

    def no_nvrtc(*a, **k):
        raise RuntimeError("CuPy failed to load libnvrtc.so.12: OSError: libnvrtc.so.12: "
                           "cannot open shared object file: No such file or directory")

    fake = types.ModuleType("cupy")
    fake.ndarray = type("ndarray", (), {})
    fake.float32 = np.float32
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    fake.arange = no_nvrtc
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_error", None)
    assert not backend.is_cupy_available()
    reason = backend.cuda_unavailable_reason()
    assert "cannot run kernels" in reason and "libnvrtc.so.12" in reason
    assert 'pip install -e ".[gpu]"' in reason and "\n" not in reason
    with pytest.raises(RuntimeError, match="device 'cuda' is not available: CuPy sees a GPU"):
        minivit.tensor([1.0]).to("cuda")


def test_gpu_extras_bring_the_cuda_libraries():
    import tomllib  # noqa: PLC0415

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras["gpu"] == ["cupy-cuda12x[ctk]>=14"]
    assert extras["gpu-cuda13"] == ["cupy-cuda13x[ctk]>=14"]


def test_the_probe_passes_where_cuda_is_usable(cuda):
    assert backend.is_cupy_available() and backend.cuda_unavailable_reason() == ""


def test_gpu_random_state_round_trips(cuda):
    """Item 5: the GPU generator's state is saved and restored: the draws after a restore are
    the draws that followed the save."""
    from minivit.nn import _random  # noqa: PLC0415

    minivit.manual_seed(7)
    _random.uniform01((5,), np.float32, "cuda")
    state = backend.get_rng_state()
    after = [backend.as_numpy(_random.uniform01((5,), np.float32, "cuda")) for _ in range(3)]
    minivit.manual_seed(99)
    _random.uniform01((5,), np.float32, "cuda")
    backend.set_rng_state(state)
    again = [backend.as_numpy(_random.uniform01((5,), np.float32, "cuda")) for _ in range(3)]
    np.testing.assert_array_equal(np.stack(after), np.stack(again))
    assert not np.array_equal(after[0], after[1])
    minivit.manual_seed(7)
    first = backend.as_numpy(_random.uniform01((5,), np.float32, "cuda"))
    minivit.manual_seed(7)
    np.testing.assert_array_equal(first, backend.as_numpy(
        _random.uniform01((5,), np.float32, "cuda")))


def test_resumed_gpu_run_with_dropout_continues_exactly(cuda, tmp_path):
    """Item 5 end to end: with drop-path (random masks every step), a run interrupted after
    epoch 1 and resumed ends with the weights of the uninterrupted run."""
    import dataclasses  # noqa: PLC0415

    from minivit.checkpoint import load_checkpoint  # noqa: PLC0415
    from minivit.train import TrainConfig, fit  # noqa: PLC0415

    def cfg(out):
        c = TrainConfig(model="vit_cifar", model_args={"depth": 2, "embed_dim": 32,
                                                       "num_heads": 2, "drop_path_rate": 0.3},
                        epochs=2, batch_size=16, eval_batch_size=32, train_limit=32,
                        test_limit=16, out=str(out), progress=False, device="cuda")
        return dataclasses.replace(c)

    fit(cfg(tmp_path / "full"), log=lambda *a: None)
    fit(cfg(tmp_path / "cut"), log=lambda *a: None, stop_after_epochs=1)
    minivit.manual_seed(12345)   # a fresh process starts from other random state
    fit(cfg(tmp_path / "cut"), resume=str(tmp_path / "cut"), log=lambda *a: None)
    full, cut = (load_checkpoint(tmp_path / r / "last.npz") for r in ("full", "cut"))
    assert full["rng"]["cuda"]["draws"] > 0 and full["rng"] == cut["rng"]
    for k, v in full["model"].items():
        np.testing.assert_array_equal(v, cut["model"][k], err_msg=k)


@pytest.mark.parametrize("amp", ["none", "fp16"])
def test_training_steps_do_not_synchronise(standin, tmp_path, amp):
    """Item 6 in the training loop: the loss, the accuracy and the NaN check wait on the
    device and are read every --log-interval steps and at the epoch's end, so running twice
    as many steps adds no synchronisation (the evaluation's are the same in both runs); with
    --amp fp16 the loss scaler's checks and updates stay on the device too."""
    from minivit.train import TrainConfig, fit  # noqa: PLC0415

    def syncs(train_limit):
        cfg = TrainConfig(model="vit_cifar", model_args={"depth": 1, "embed_dim": 32,
                                                         "num_heads": 2},
                          epochs=1, batch_size=8, eval_batch_size=16, train_limit=train_limit,
                          test_limit=16, progress=False, device="cuda", amp=amp)
        with cupy_standin.counting() as c:
            fit(cfg, log=lambda *a: None)
        return c["syncs"]

    backend.is_cupy_available()   # its one-time probe reads a value back
    assert syncs(16) == syncs(48)


def test_gpu_check_without_a_gpu_writes_why(tmp_path):
    out = tmp_path / "check.json"
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "MINIVIT_CUDA_STANDIN": "0"})
    if backend.is_cupy_available() and not getattr(backend._cupy, "STANDIN", False):
        pytest.skip("a GPU is here: tools/gpu_check.py would run for minutes")
    import json  # noqa: PLC0415

    report = json.loads(out.read_text())
    assert p.returncode == 1 and report["gpu"]["usable"] is False
    assert "no usable GPU" in p.stderr


def test_gpu_check_reads_pytest_counts():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gpu_check  # noqa: PLC0415
    finally:
        sys.path.pop(0)
    assert gpu_check.pytest_counts("3 failed, 290 passed, 2 skipped in 9.1s") == \
        {"failed": 3, "passed": 290, "skipped": 2}


def test_tf32_rounds_matmul_operands_on_the_gpu_only(device):
    """--tf32: on the GPU (the stand-in rounds float32 product operands to TF32 as cuBLAS
    does) the products move by about 1e-3 relative, not more; on the CPU nothing changes."""
    from minivit.autograd import backend as be  # noqa: PLC0415

    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 96)).astype(np.float32)
    b = rng.standard_normal((96, 32)).astype(np.float32)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    results = []
    for on in (False, True):
        be.set_tf32(on)
        try:
            x, y = (be.to_device(v, device) for v in (a, b))
            results.append(be.as_numpy(minivit.Tensor(x).matmul(minivit.Tensor(y)).data))
        finally:
            be.set_tf32(False)
    err = [np.abs(r - exact).max() / np.abs(exact).max() for r in results]
    assert err[0] < 1e-6
    if device == "cpu":
        np.testing.assert_array_equal(results[0], results[1])
    else:
        assert 1e-5 < err[1] < 3e-3, err


def test_tf32_option_trains_on_the_gpu_path(cuda, capsys, tmp_path):
    from minivit import cli  # noqa: PLC0415

    tiny = ["--model", "vit_cifar", "--model-arg", "depth=1", "--model-arg", "embed_dim=32",
            "--model-arg", "num_heads=2", "--batch-size", "16", "--train-limit", "32",
            "--test-limit", "16", "--no-progress", "--epochs", "1"]
    try:
        assert cli.main(["train", *tiny, "--device", "cuda", "--tf32",
                         "--out", str(tmp_path / "r")]) == 0
    finally:
        backend.set_tf32(False)
    assert '"tf32": true' in (tmp_path / "r" / "config.json").read_text()

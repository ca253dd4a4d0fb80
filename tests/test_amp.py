"""Mixed precision (issue 29): ``minivit.autocast``, ``minivit.amp.GradScaler`` and
``minivit train --amp``, on the CPU and the CUDA path (``[cuda-standin]`` without a GPU)."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minivit
import minivit.nn.functional as F
from minivit import amp, nn, optim
from minivit.autograd import backend
from minivit.autograd.autocast import AutocastRound, round_bf16, round_fp16
from minivit.models import create_model

import cupy_standin


def _on(device, a):
    return backend.to_device(np.asarray(a), device)


def _host(a):
    return backend.as_numpy(a.data if isinstance(a, minivit.Tensor) else a)


# --- rounding ------------------------------------------------------------------------------------

def _bf16_reference(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (8 significant bits, ties to even) in float64 arithmetic:
    an independent check of the bit trick in ``round_bf16``."""
    x64 = x.astype(np.float64)
    out = np.empty_like(x64)
    for i, v in enumerate(x64.ravel()):
        if not math.isfinite(v) or v == 0:
            out.flat[i] = v
            continue
        e = max(math.frexp(v)[1], -125)           # v = m 2^e, 0.5 <= |m| < 1; bf16's subnormals
        q = 2.0 ** (e - 8)                         # the spacing of 8-bit significands at e
        out.flat[i] = np.rint(v / q) * q           # rint: ties to even
    big = np.abs(out) > 3.3895313892515355e38   # past bfloat16's largest value: inf
    out[big] = np.copysign(np.inf, out[big])
    return out


finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@given(st.lists(finite32, min_size=1, max_size=40))
def test_bf16_rounding_is_round_to_nearest_even(values):
    x = np.array(values, dtype=np.float32)
    np.testing.assert_array_equal(round_bf16(x), _bf16_reference(x).astype(np.float32))


def test_bf16_rounding_ties_overflow_and_nan():
    x = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 3.4e38, np.inf, -np.inf,
                  np.nan, 0.0, -0.0], np.float32)
    want = np.array([1.0, 1 + 2 ** -6, -1.0, np.inf, np.inf, -np.inf, np.nan, 0.0, -0.0])
    np.testing.assert_array_equal(round_bf16(x), want.astype(np.float32))
    nan_bits = np.array([0x7F800001, 0x7FFFFFFF, 0xFFC00000], np.uint32).view(np.float32)
    assert np.isnan(round_bf16(nan_bits)).all()   # NaNs stay NaN, never inf or 0


def test_fp16_rounding_overflows_to_inf_and_flushes_tiny_values_without_warnings(recwarn):
    x = np.array([65504.0, 65520.0, -1e6, 2.0 ** -24, 2.0 ** -26, 1 / 3], np.float32)
    r = round_fp16(x)
    assert r.dtype == np.float32 and not recwarn.list
    np.testing.assert_array_equal(r[:5], [65504.0, np.inf, -np.inf, 2.0 ** -24, 0.0])
    assert r[5] == np.float32(np.float16(1 / 3))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_rounding_on_the_gpu_path_equals_the_cpu(cuda, precision):
    """bf16: the one-launch kernel (kernels/cuda_rows.py) against the array code, on the
    GPU and on the CPU; fp16: CuPy's and NumPy's float16 casts."""
    from minivit.kernels import cuda as cuda_kernels  # noqa: PLC0415

    x = np.random.default_rng(0).standard_normal((3, 257)).astype(np.float32) * 1e3
    x[0, :6] = [np.inf, np.nan, 1e30, 3.4e38, -0.0, 1 + 2 ** -8]
    x[1, :3] = np.array([0x7F800001, 0x7FFFFFFF, 0xFFC00001], np.uint32).view(np.float32)
    want = amp.round_to(x, precision)
    with cuda_kernels.fused_kernels(False):
        plain = _host(amp.round_to(_on(cuda, x), precision))
    fast = _host(amp.round_to(_on(cuda, x)[:, 1:], precision))   # a strided view too
    np.testing.assert_array_equal(plain, want)
    np.testing.assert_array_equal(fast, want[:, 1:])
    assert np.isnan(fast[1, :2]).all() and np.isnan(want[1, :3]).all()


# --- autocast --------------------------------------------------------------------------------------

def test_autocast_round_backward_is_the_rounded_gradient(device):
    x = minivit.Tensor(_on(device, np.linspace(-3, 3, 50, dtype=np.float32)),
                       requires_grad=True)
    g = np.random.default_rng(1).standard_normal(50).astype(np.float32)
    for precision in ("bf16", "fp16"):
        x.grad = None
        y = AutocastRound.apply(x, dtype=precision)
        assert repr(y.grad_fn) == "<AutocastRoundBackward>"
        (y * minivit.Tensor(_on(device, g))).sum().backward()
        np.testing.assert_array_equal(_host(x.grad), amp.round_to(g, precision))


def test_autocast_linear_is_a_low_precision_product_with_a_float32_residual():
    rng = np.random.default_rng(0)
    x, w, b, r = (rng.standard_normal(s).astype(np.float32) for s in ((6, 5), (4, 5), (4,),
                                                                        (6, 4)))
    tx, tw, tb = (minivit.Tensor(a, requires_grad=True) for a in (x, w, b))
    with minivit.autocast("bf16"):
        y = F.linear(tx, tw, tb, residual=minivit.Tensor(r))
    low = round_bf16
    want = low(low(x) @ low(w).T + low(b)) + r
    np.testing.assert_allclose(y.data, want, rtol=1e-6, atol=1e-6)
    g = rng.standard_normal((6, 4)).astype(np.float32)
    (y * minivit.Tensor(g)).sum().backward()
    np.testing.assert_allclose(tw.grad.data, low(low(g).T @ low(x)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(tx.grad.data, low(low(g) @ low(w)), rtol=1e-6, atol=1e-6)
    assert {t.grad.dtype for t in (tx, tw, tb)} == {np.dtype(np.float32)}


def test_autocast_leaves_the_sensitive_ops_in_float32(device):
    x = minivit.Tensor(_on(device, np.random.default_rng(2).standard_normal((4, 33))
                           .astype(np.float32) * 3))
    for fn in (lambda t: F.layer_norm(t, (33,)), lambda t: minivit.softmax(t, axis=-1),
               lambda t: F.cross_entropy(t, minivit.Tensor(_on(device, np.arange(4)))),
               lambda t: t.sum(axis=0), lambda t: F.gelu(t)):
        plain = _host(fn(x))
        with minivit.autocast("fp16"):
            np.testing.assert_array_equal(_host(fn(x)), plain)


@given(n=st.integers(1, 5), k=st.integers(1, 7), m=st.integers(1, 4))
def test_autocast_gradients_are_the_float64_ones_to_the_low_precision(n, k, m):
    """The straight-through gradient of a product under autocast against the exact
    (float64) gradient: within the precision's relative error times the sum length."""
    rng = np.random.default_rng(n * 100 + k * 10 + m)
    x64, w64 = rng.standard_normal((n, k)), rng.standard_normal((m, k))
    g = rng.standard_normal((n, m))
    exact_w, exact_x = g.T @ x64, g @ w64
    for precision, u in (("bf16", 2.0 ** -8), ("fp16", 2.0 ** -11)):
        tx, tw = (minivit.Tensor(a.astype(np.float32), requires_grad=True) for a in (x64, w64))
        with minivit.autocast(precision):
            y = minivit.matmul(tx, tw.T)
        (y * minivit.Tensor(g.astype(np.float32))).sum().backward()
        tol = 4 * (k + n + m) * u
        scale_w = np.abs(g).T @ np.abs(x64) + 1e-30
        scale_x = np.abs(g) @ np.abs(w64) + 1e-30
        assert np.all(np.abs(tw.grad.data - exact_w) <= tol * scale_w)
        assert np.all(np.abs(tx.grad.data - exact_x) <= tol * scale_x)


def test_float64_is_never_cast_so_a_gradcheck_passes_inside_autocast():
    minivit.manual_seed(0)
    x = minivit.randn(2, 3, 5, 5, dtype="float64", requires_grad=True)
    w = minivit.randn(4, 3, 3, 3, dtype="float64", requires_grad=True)
    lin = minivit.randn(6, 4, dtype="float64", requires_grad=True)
    qkv = minivit.randn(2, 4, 12, dtype="float64", requires_grad=True)
    with minivit.autocast("fp16"):
        assert minivit.gradcheck(lambda a, b: F.conv2d(a, b, padding=1), x, w)
        assert minivit.gradcheck(lambda a, b: F.linear(a, b, act="gelu"),
                                 minivit.randn(3, 4, dtype="float64", requires_grad=True), lin)
        assert minivit.gradcheck(lambda t: F.self_attention(t, num_heads=2), qkv)


def test_autocast_names_and_nesting():
    assert not amp.is_autocast_enabled()
    with minivit.autocast("bfloat16"):
        assert amp.get_autocast_dtype() == "bf16"
        with minivit.autocast("fp16", enabled=False):
            assert not amp.is_autocast_enabled()
        assert amp.get_autocast_dtype() == "bf16"
    assert amp.get_autocast_dtype() is None


# --- the scaler ------------------------------------------------------------------------------------

def _tiny(device, seed=0):
    minivit.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 3)).to(device)
    rng = np.random.default_rng(seed)
    x = minivit.Tensor(_on(device, rng.standard_normal((5, 6)).astype(np.float32)))
    y = minivit.Tensor(_on(device, rng.integers(0, 3, 5)))
    return model, x, y


def _scaled_step(model, opt, scaler, x, y, plant_inf=False, precision=None):
    with minivit.autocast(precision or "fp16", enabled=precision is not None):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    scaler.scale(loss).backward()
    if plant_inf:
        model[2].weight.grad.data[0, 0] = np.inf
    if precision is not None:
        scaler.unscale_(opt)   # as the training loop does, before clipping and logging
    scaler.step(opt)
    scaler.update()


def test_scaler_skips_a_step_with_an_inf_gradient_and_halves_the_scale(device):
    model, x, y = _tiny(device)
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    scaler = amp.GradScaler()
    _scaled_step(model, opt, scaler, x, y)
    before = {k: _host(v).copy() for k, v in model.state_dict().items()}
    moments = [_host(s["exp_avg_sq"]).copy() for s in opt.state.values()]
    _scaled_step(model, opt, scaler, x, y, plant_inf=True)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(_host(v), before[k], err_msg=k)
    for s, m in zip(opt.state.values(), moments):
        np.testing.assert_array_equal(_host(s["exp_avg_sq"]), m)
    assert (scaler.get_scale(), scaler.get_growth_tracker(), scaler.skipped_steps()) == \
        (2.0 ** 15, 0, 1)
    _scaled_step(model, opt, scaler, x, y)
    # the same as two plain AdamW steps: the skipped one left no trace, Adam's bias
    # correction included (t = 2, not 3)
    ref, _, _ = _tiny(device)
    ref_opt = optim.AdamW(ref.parameters(), lr=1e-2)
    for _ in range(2):
        loss = F.cross_entropy(ref(x), y)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
    for (k, v), r in zip(model.state_dict().items(), ref.state_dict().values()):
        np.testing.assert_allclose(_host(v), _host(r), rtol=1e-5, atol=1e-7, err_msg=k)


def test_scaler_grows_after_growth_interval_good_steps(device):
    model, x, y = _tiny(device)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = amp.GradScaler(init_scale=4.0, growth_interval=3)
    seen = []
    for _ in range(5):
        _scaled_step(model, opt, scaler, x, y)
        seen.append((scaler.get_scale(), scaler.get_growth_tracker()))
    assert seen == [(4.0, 1), (4.0, 2), (8.0, 0), (8.0, 1), (8.0, 2)]
    _scaled_step(model, opt, scaler, x, y, plant_inf=True)
    assert (scaler.get_scale(), scaler.get_growth_tracker(), scaler.skipped_steps()) == \
        (4.0, 0, 1)


def test_an_fp16_step_does_not_synchronise(standin):
    model, x, y = _tiny("cuda")
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    scaler = amp.GradScaler(growth_interval=2)
    _scaled_step(model, opt, scaler, x, y)   # the first step builds the flat buffers
    with cupy_standin.counting() as c, cupy_standin.no_sync():
        for plant in (False, True, False):
            _scaled_step(model, opt, scaler, x, y, plant_inf=plant, precision="fp16")
    assert c["syncs"] == 0 and c["d2h"] == 0
    # good (2 in a row: 2^17), inf (halved: 2^16, skipped), good
    assert (scaler.get_scale(), scaler.skipped_steps()) == (2.0 ** 16, 1)


def test_scaler_state_round_trips_and_bad_values_are_one_line_errors():
    scaler = amp.GradScaler(init_scale=8.0, growth_interval=5)
    model, x, y = _tiny("cpu")
    _scaled_step(model, optim.SGD(model.parameters(), lr=0.1), scaler, x, y)
    state = scaler.state_dict()
    assert state == {"scale": 8.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                     "growth_interval": 5, "_growth_tracker": 1, "skipped_steps": 0}
    other = amp.GradScaler()
    other.load_state_dict(state)
    assert other.state_dict() == state
    assert amp.GradScaler(enabled=False).state_dict() == {}
    for kwargs, text in (({"init_scale": 0.0}, "init_scale must be > 0"),
                         ({"growth_factor": 1.0}, "growth_factor must be > 1"),
                         ({"backoff_factor": 1.5}, "backoff_factor must be in"),
                         ({"growth_interval": 0}, "growth_interval must be an integer")):
        with pytest.raises(ValueError, match=text) as exc:
            amp.GradScaler(**kwargs)
        assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="unknown precision 'fp8'; expected 'bf16'"):
        with minivit.autocast("fp8"):
            pass
    with pytest.raises(ValueError, match="the state has no 'scale'"):
        amp.GradScaler().load_state_dict({"growth_factor": 2.0})
    half = minivit.Tensor(np.ones(3, np.float16), requires_grad=True)   # fp16 "masters"
    scaler = amp.GradScaler(init_scale=4.0)
    opt = optim.SGD([half], lr=0.1)
    scaler.scale((half * half).sum()).backward()
    with pytest.raises(ValueError, match="the gradients are float16; keep the parameters "
                                         "float32"):
        scaler.step(opt)


# --- training ------------------------------------------------------------------------------------

def _vit_losses(device, precision, steps=4):
    minivit.manual_seed(0)
    model = create_model("vit_cifar", num_classes=10, depth=1).to(device)
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    scaler = amp.GradScaler(enabled=precision == "fp16")
    rng = np.random.default_rng(0)
    x = minivit.Tensor(_on(device, rng.standard_normal((4, 3, 32, 32)).astype(np.float32)))
    y = minivit.Tensor(_on(device, rng.integers(0, 10, 4)))
    losses = []
    for _ in range(steps):
        with minivit.autocast(precision or "bf16", enabled=precision is not None):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.data)
    for p in model.parameters():   # float32 master weights, gradients and optimizer state
        assert p.dtype == np.float32 and p.grad.dtype == np.float32
    assert all(v.dtype == np.float32 for s in opt.state.values() for v in s.values()
               if backend.is_array(v))
    return np.array([float(_host(v)) for v in losses]), scaler.skipped_steps()


# measured (vit_cifar depth 1, batch 4, 4 AdamW steps at lr 1e-3): the largest relative
# difference from float32 is about 0.4% for bf16 and 0.05% for fp16
TOLERANCE = {"bf16": 2e-2, "fp16": 3e-3}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_amp_training_tracks_the_float32_loss(device, precision):
    full, _ = _vit_losses(device, None, steps=5)
    low, skipped = _vit_losses(device, precision, steps=5)
    assert full[-1] < full[0]   # it is learning (the batch), so the comparison means something
    # fp16: the first step overflows at the initial scale 2^16 here (the patch embedding's
    # weight gradient sums over every patch) and is skipped, leaving no trace: the run is
    # the float32 run one step later
    assert skipped == (1 if precision == "fp16" else 0)
    np.testing.assert_allclose(low[skipped:], full[:len(full) - skipped],
                               rtol=TOLERANCE[precision])
    assert not np.array_equal(low, full)   # and the low precision did change the numbers


def test_amp_option_trains_and_resume_restores_the_scaler(device, tmp_path):
    from minivit.checkpoint import load_checkpoint  # noqa: PLC0415
    from minivit.train import TrainConfig, fit  # noqa: PLC0415

    def cfg(out):
        return TrainConfig(model="vit_cifar", model_args={"depth": 1, "embed_dim": 32,
                                                          "num_heads": 2},
                           epochs=2, batch_size=8, eval_batch_size=16, train_limit=16,
                           test_limit=8, out=str(out), progress=False, device=device,
                           amp="fp16")

    fit(cfg(tmp_path / "full"), log=lambda *a: None)
    fit(cfg(tmp_path / "cut"), log=lambda *a: None, stop_after_epochs=1)
    half = load_checkpoint(tmp_path / "cut" / "last.npz")["scaler"]
    assert half["_growth_tracker"] == 2 and half["scale"] == 2.0 ** 16
    fit(cfg(tmp_path / "cut"), resume=str(tmp_path / "cut"), log=lambda *a: None)
    full, cut = (load_checkpoint(tmp_path / r / "last.npz") for r in ("full", "cut"))
    assert cut["scaler"] == full["scaler"] and full["scaler"]["_growth_tracker"] == 4
    for k, v in full["model"].items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, cut["model"][k], err_msg=k)


def test_amp_command_line_option():
    r = subprocess.run([sys.executable, "-m", "minivit", "train", "--amp", "fp8"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "amp (--amp) must be one of 'none', 'bf16', 'fp16', got 'fp8'" in last


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_tf32_adds_no_error_to_autocast_products(cuda, precision):
    """TF32 keeps 10 mantissa bits and the operands under autocast are bf16 (7) or fp16 (10)
    values, so --tf32 rounds them exactly: the same products (on the stand-in, which rounds
    product operands as cuBLAS's TF32 does, and on a GPU up to the order of the sums)."""
    rng = np.random.default_rng(0)
    a, b = (_on(cuda, rng.standard_normal(s).astype(np.float32)) for s in ((48, 64), (64, 16)))
    results = []
    for on in (False, True):
        backend.set_tf32(on)
        try:
            with minivit.autocast(precision):
                results.append(_host(minivit.matmul(minivit.Tensor(a), minivit.Tensor(b))))
        finally:
            backend.set_tf32(False)
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6, atol=1e-5)


def test_minivit_train_amp_on_the_gpu_path(cuda, tmp_path):
    from minivit import cli  # noqa: PLC0415

    tiny = ["--model", "vit_cifar", "--model-arg", "depth=1", "--model-arg", "embed_dim=32",
            "--model-arg", "num_heads=2", "--batch-size", "16", "--train-limit", "32",
            "--test-limit", "16", "--no-progress", "--epochs", "1"]
    assert cli.main(["train", *tiny, "--device", "cuda", "--amp", "fp16", "--clip-grad", "1.0",
                     "--log-interval", "1", "--out", str(tmp_path / "r")]) == 0
    assert '"amp": "fp16"' in (tmp_path / "r" / "config.json").read_text()
    lines = (tmp_path / "r" / "steps.jsonl").read_text().splitlines()
    assert len(lines) == 2
    # the step log and the clipping see the unscaled gradients (scaled ones: norms of ~1e5)
    assert 0 < json.loads(lines[0])["grad_norm"] < 100

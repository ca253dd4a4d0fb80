"""CIFARLoader and the batch transforms (minivit.data.loader, minivit.data.transforms)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from minivit.data import (
    CIFAR10_MEAN, CIFAR10_STD, CIFARLoader, RandAugment, RandomCrop, RandomHorizontalFlip,
    make_augment, to_float_nchw,
)
from minivit.data.transforms import _op


def images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def batches(loader, limit: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for i, (x, y) in enumerate(loader):
        out.append((x.copy(), y.copy()))
        if limit is not None and i + 1 == limit:
            break
    return out


def assert_batches_equal(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "minivit-prefetch"]


# -- transforms against per-image reference loops ---------------------------------------------
def test_random_crop_matches_pixel_loop():
    x, _ = images(6)
    out = RandomCrop(32, 4)(x, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    oy, ox = rng.integers(0, 9, 6), rng.integers(0, 9, 6)
    for n in range(6):
        for i in range(32):
            for j in range(32):
                si, sj = i + oy[n] - 4, j + ox[n] - 4
                want = x[n, si, sj] if 0 <= si < 32 and 0 <= sj < 32 else [0, 0, 0]
                np.testing.assert_array_equal(out[n, i, j], want)


def test_loader_crop_flip_normalise_match_reference_loop():
    x, y = images(20)
    seed, b = 7, 8
    loader = CIFARLoader(x, y, batch_size=b, shuffle=True, seed=seed, augment="standard",
                         prefetch=False)
    order = np.random.default_rng([seed, 0, 0]).permutation(20)
    mean, std = np.array(CIFAR10_MEAN), np.array(CIFAR10_STD)
    for index, (xb, yb) in enumerate(loader):
        assert xb.dtype == np.float32 and xb.flags.c_contiguous and yb.dtype == np.int64
        idx = order[index * b:(index + 1) * b]
        rng = np.random.default_rng([seed, 0, 1, index])
        oy, ox = rng.integers(0, 9, len(idx)), rng.integers(0, 9, len(idx))
        flip = rng.random(len(idx)) < 0.5
        for k, n in enumerate(idx):
            padded = np.zeros((40, 40, 3))
            padded[4:36, 4:36] = x[n]
            img = padded[oy[k]:oy[k] + 32, ox[k]:ox[k] + 32]
            if flip[k]:
                img = img[:, ::-1]
            want = ((img / 255 - mean) / std).transpose(2, 0, 1)
            np.testing.assert_allclose(xb[k], want, atol=1e-5)
            assert yb[k] == y[n]
    assert loader.epoch == 1


def test_flip_and_eval_path():
    x, y = images(5)
    out = RandomHorizontalFlip(1.0)(x, np.random.default_rng(0))
    np.testing.assert_array_equal(out, x[:, :, ::-1])
    xb, yb = next(iter(CIFARLoader(x, y, batch_size=5, shuffle=False, mean=None, std=None)))
    np.testing.assert_allclose(xb, x.transpose(0, 3, 1, 2) / 255, atol=1e-7)
    np.testing.assert_array_equal(yb, y)
    assert to_float_nchw(x, dtype=np.float64).dtype == np.float64


# -- determinism, epochs, resume ---------------------------------------------------------------
def test_same_seed_same_batches_other_seed_or_epoch_differs():
    x, y = images(50)
    kw = dict(batch_size=16, augment="randaugment", mixup=0.2, cutmix=1.0)
    a = batches(CIFARLoader(x, y, seed=1, **kw))
    b = batches(CIFARLoader(x, y, seed=1, **kw))
    assert_batches_equal(a, b)
    c = batches(CIFARLoader(x, y, seed=2, **kw))
    assert not np.array_equal(a[0][0], c[0][0])
    loader = CIFARLoader(x, y, seed=1, **kw)
    first, second = batches(loader), batches(loader)  # epochs 0 and 1
    assert_batches_equal(first, a)
    assert not np.array_equal(first[0][0], second[0][0])
    other = CIFARLoader(x, y, seed=1, **kw)
    other.set_epoch(1)
    assert_batches_equal(batches(other), second)


def test_state_dict_resumes_mid_epoch_exactly():
    x, y = images(60)
    kw = dict(batch_size=8, seed=5, augment="standard", mixup=0.4)
    full = CIFARLoader(x, y, **kw)
    batches(full)
    epoch1 = batches(full)
    run = CIFARLoader(x, y, **kw)
    batches(run)
    head = batches(run, limit=3)  # "crash" after 3 batches of epoch 1
    state = run.state_dict()
    assert state == {"seed": 5, "epoch": 1, "batch": 3}
    resumed = CIFARLoader(x, y, **kw)
    resumed.load_state_dict(state)
    tail = batches(resumed)
    assert_batches_equal(head + tail, epoch1)
    assert resumed.state_dict() == {"seed": 5, "epoch": 2, "batch": 0}


def test_epoch_is_a_permutation_and_drop_last_sizes():
    x, _ = images(10)
    y = np.arange(10)
    loader = CIFARLoader(x, y, batch_size=4, prefetch=False)
    assert len(loader) == 3
    got = batches(loader)
    assert [len(b) for _, b in got] == [4, 4, 2]
    assert sorted(np.concatenate([b for _, b in got])) == list(range(10))
    dropped = CIFARLoader(x, y, batch_size=4, drop_last=True)
    assert len(dropped) == 2
    assert [len(b) for _, b in batches(dropped)] == [4, 4]
    assert len(CIFARLoader(x, y, batch_size=10, drop_last=True)) == 1
    assert len(CIFARLoader(x, y, batch_size=11, drop_last=True)) == 0
    assert batches(CIFARLoader(x, y, batch_size=11, drop_last=True)) == []
    unshuffled = batches(CIFARLoader(x, y, batch_size=4, shuffle=False))
    np.testing.assert_array_equal(np.concatenate([b for _, b in unshuffled]), y)


def test_prefetch_on_off_same_batches():
    x, y = images(70)
    kw = dict(batch_size=16, seed=3, augment="randaugment", cutmix=1.0, mixup=0.8)
    assert_batches_equal(batches(CIFARLoader(x, y, prefetch=True, **kw)),
                         batches(CIFARLoader(x, y, prefetch=False, **kw)))


# -- mixup and cutmix --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["mixup", "cutmix", "both"])
def test_soft_targets_match_mixed_content(mode):
    b = 12
    values = np.arange(b) * 20 + 5  # image k is constant values[k]
    x = np.broadcast_to(values[:, None, None, None], (b, 32, 32, 3)).astype(np.uint8)
    y = np.arange(b)  # one class per image: the targets say where each pixel came from
    kw = {"mixup": 0.5 if mode != "cutmix" else 0.0, "cutmix": 1.0 if mode != "mixup" else 0.0}
    boxes = 0
    for seed in range(6):
        loader = CIFARLoader(x, y, batch_size=b, shuffle=False, seed=seed, mean=None, std=None,
                             num_classes=b, **kw)
        xb, t = next(iter(loader))
        assert t.shape == (b, b) and t.dtype == np.float32
        np.testing.assert_allclose(t.sum(1), 1, atol=1e-6)
        # the mean of each mixed image is the target-weighted mean of the sources
        np.testing.assert_allclose(xb.mean(axis=(1, 2, 3)), t @ (values / 255), atol=1e-5)
        pix = np.rint(xb[:, 0] * 255).astype(int)
        if np.isin(pix, values).all():  # a cutmix batch: each pixel from exactly one image
            frac = (pix[:, :, :, None] == values).mean(axis=(1, 2))
            np.testing.assert_allclose(t, frac, atol=1e-6)
            boxes += int((frac.max(1) < 1).any())
    if mode != "mixup":
        assert boxes > 0


def test_no_mixing_gives_integer_labels():
    x, y = images(8)
    _, yb = next(iter(CIFARLoader(x, y, batch_size=8)))
    assert yb.dtype == np.int64 and yb.shape == (8,)


# -- RandAugment -------------------------------------------------------------------------------
@pytest.mark.parametrize("op", [o for o in RandAugment.OPS if o != "autocontrast"])
def test_randaugment_ops_at_magnitude_zero_are_identity(op):
    x, _ = images(4)
    out = RandAugment(1, 0, ops=[op])(x, np.random.default_rng(0))
    np.testing.assert_array_equal(out, x)


def test_randaugment_ops_run_and_keep_shape():
    x, _ = images(64)
    out = RandAugment(3, 9)(x, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == np.uint8 and not np.array_equal(out, x)
    for op in RandAugment.OPS:
        res = _op(op, x[:3], np.array([0.7, -0.7, 1.0], np.float32), 128)
        assert res.shape == (3, 32, 32, 3) and res.dtype == np.uint8, op
    with pytest.raises(ValueError, match="unknown RandAugment ops"):
        RandAugment(ops=["blur"])


def test_geometric_ops_against_references():
    x, _ = images(2)
    shift = np.full(2, 8 / (0.45 * 32), np.float32)  # exactly 8 pixels to the right
    out = _op("translate_x", x, shift, 128)
    np.testing.assert_array_equal(out[:, :, 8:], x[:, :, :-8])
    assert (out[:, :, :8] == 128).all()
    out = _op("translate_y", x, -shift, 0)  # 8 pixels up
    np.testing.assert_array_equal(out[:, :-8], x[:, 8:])
    np.testing.assert_array_equal(_op("posterize", x, np.ones(2, np.float32), 0), x & 0xF0)
    np.testing.assert_array_equal(_op("solarize", x, np.full(2, 0.5, np.float32), 0),
                                  np.where(x >= 128, 255 - x, x))


def test_make_augment_names():
    assert make_augment(False) is None and make_augment("none") is None
    assert make_augment("standard") is not None and make_augment(True) is not None
    with pytest.raises(ValueError, match="unknown augment"):
        make_augment("autoaugment")


# -- background thread -------------------------------------------------------------------------
def test_abandoned_iteration_stops_the_thread():
    x, y = images(400)
    loader = CIFARLoader(x, y, batch_size=8, augment="standard")
    for _ in loader:
        break
    it = iter(loader)
    next(it)
    del it  # abandoned without close: the generator's cleanup stops the thread
    deadline = time.time() + 5
    while prefetch_threads() and time.time() < deadline:
        time.sleep(0.01)
    assert not prefetch_threads()
    assert len(batches(loader)) == 50  # the epoch restarts cleanly


def test_producer_errors_reach_the_consumer():
    x, y = images(40)

    def broken(batch, rng):
        raise RuntimeError("augment failed")

    with pytest.raises(RuntimeError, match="augment failed"):
        batches(CIFARLoader(x, y, batch_size=8, augment=broken))
    assert not prefetch_threads()


def test_no_hang_at_exit_with_an_open_iterator():
    code = (
        "import numpy as np\n"
        "from minivit.data import CIFARLoader\n"
        "x = np.zeros((4096, 32, 32, 3), np.uint8)\n"
        "it = iter(CIFARLoader(x, np.zeros(4096, int), batch_size=64, augment='standard'))\n"
        "next(it)\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_bad_inputs():
    x, y = images(4)
    with pytest.raises(TypeError, match="uint8"):
        CIFARLoader(x.astype(np.float32), y)
    with pytest.raises(TypeError, match="integer labels"):
        CIFARLoader(x, y[:3])
    with pytest.raises(ValueError, match="batch_size"):
        CIFARLoader(x, y, batch_size=0)

"""The CIFAR loader with ``device="cuda"``: images resident on the GPU, each batch made there in
one or two kernel launches from one small upload (``minivit/data/gpu.py``)."""
import numpy as np
import pytest

from minivit.autograd import backend
from minivit.data import CIFARLoader
from minivit.data.transforms import CIFAR10_MEAN, CIFAR10_STD, RandomCrop, RandomHorizontalFlip
from minivit.distributed import ShardedLoader

import cupy_standin


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, n).astype(np.int64))


def _pair(**kw):
    x, y = _data()
    kw = {"batch_size": 16, "seed": 3, "prefetch": False, **kw}
    return CIFARLoader(x, y, device="cuda", **kw), CIFARLoader(x, y, **kw)


def _host(a):
    return backend.as_numpy(a)


def test_batch_is_a_gpu_array_and_equals_a_numpy_recomputation(cuda):
    gpu, _ = _pair(augment="standard")
    assert gpu.gpu is not None
    xb, yb = gpu.make_batch(1, 1)
    assert not isinstance(xb, np.ndarray) and backend.device_of(xb) == "cuda"
    assert xb.shape == (16, 3, 32, 32) and xb.dtype == np.float32 and yb.dtype == np.int64
    # the same draws as the CPU transforms, recomputed here in NumPy from the batch's generator
    idx = gpu.batch_indices(1, gpu.order(1))
    rng = gpu.batch_rng(1, 1)
    oy, ox = RandomCrop(32, 4).draw(16, 32, 32, rng)
    flip = RandomHorizontalFlip().draw(16, rng)
    assert 0 < flip.sum() < 16 and len(set(oy.tolist())) > 1
    padded = np.pad(gpu.x[idx], ((0, 0), (4, 4), (4, 4), (0, 0)))
    want = np.stack([padded[k, oy[k]:oy[k] + 32, ox[k]:ox[k] + 32] for k in range(16)])
    want[flip] = want[flip, :, ::-1]
    want = ((want / 255.0 - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(_host(xb), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(_host(yb), gpu.y[idx])


@pytest.mark.parametrize("kw", [dict(augment="standard"), dict(augment=None, shuffle=False),
                                dict(augment="standard", mixup=0.8),
                                dict(augment="standard", cutmix=1.0),
                                dict(augment="standard", mixup=0.8, cutmix=1.0)],
                         ids=["standard", "plain", "mixup", "cutmix", "both"])
def test_gpu_batches_equal_the_cpu_loaders(cuda, kw):
    """Same seed, same draws: crops, flips and mixing equal the CPU loader's, to rounding."""
    gpu, cpu = _pair(**kw)
    gpu.set_epoch(2)
    cpu.set_epoch(2)
    for (xg, yg), (xc, yc) in zip(gpu, cpu, strict=True):
        np.testing.assert_allclose(_host(xg), xc, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(_host(yg), yc, rtol=1e-6, atol=1e-7)
        assert _host(yg).dtype == yc.dtype


def test_normalisation_and_no_augment(cuda):
    x, y = _data(8)
    loader = CIFARLoader(x, y, batch_size=8, shuffle=False, mean=None, std=None, device="cuda")
    xb, _ = next(iter(loader))
    np.testing.assert_allclose(_host(xb), x.transpose(0, 3, 1, 2) / 255.0, rtol=1e-6)
    loader = CIFARLoader(x, y, batch_size=8, shuffle=False, mean=(0.5, 0.25, 0.1),
                         std=(0.5, 2.0, 0.2), dtype=np.float64, device="cuda")
    xb, _ = next(iter(loader))
    want = (x.transpose(0, 3, 1, 2) / 255.0 - np.array([0.5, 0.25, 0.1])[:, None, None]) \
        / np.array([0.5, 2.0, 0.2])[:, None, None]
    assert xb.dtype == np.float64
    np.testing.assert_allclose(_host(xb), want, rtol=1e-12, atol=1e-12)


def _counted(kw):
    """(the loader's construction, each batch of two epochs): what each did on the GPU, a
    synchronisation while making a batch raising."""
    x, y = _data()
    with cupy_standin.counting() as made:
        loader = CIFARLoader(x, y, batch_size=16, seed=3, device="cuda", **kw)
    per_batch = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        it = iter(loader)
        for _ in range(len(loader)):
            with cupy_standin.counting() as c, cupy_standin.no_sync():
                next(it)
            per_batch.append(c)
    return made, per_batch


@pytest.mark.parametrize("kw, launches", [(dict(augment="standard"), 1),
                                          (dict(augment="standard", mixup=0.8, cutmix=1.0), 2)])
def test_few_launches_one_small_upload_no_sync_per_batch(standin, kw, launches):
    made, per_batch = _counted(kw)
    assert made["h2d"] == 3 and made["launches"] == 0   # images, scale, shift: once
    for c in per_batch:
        # one upload: indices, offsets, flips, partners and labels in one int64 array
        assert (c["launches"], c["h2d"], c["d2h"], c["syncs"]) == (launches, 1, 0, 0)


def test_bad_device_is_refused():
    x, y = _data()
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda', got 'tpu'"):
        CIFARLoader(x, y, device="tpu")


# --- RandAugment: augmented on the host, uploaded through pinned memory --------------------

def _flip_every_other(x, rng):
    """A custom augment callable (host side): mirror the even images, shifted by rng's draw."""
    x = x.copy()
    x[::2] = x[::2, :, ::-1]
    return np.roll(x, int(rng.integers(0, 3)), axis=1)


RANDAUGMENT_CASES = [dict(augment="randaugment"), dict(augment="randaugment", mixup=0.8),
                     dict(augment="randaugment", cutmix=1.0),
                     dict(augment=_flip_every_other, mixup=0.5, cutmix=1.0)]
RANDAUGMENT_IDS = ["randaugment", "mixup", "cutmix", "callable-both"]


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("kw", RANDAUGMENT_CASES, ids=RANDAUGMENT_IDS)
def test_host_augmented_batches_equal_the_cpu_loaders(cuda, kw, prefetch):
    """The batches (augmented in the prefetch thread, or not) equal the CPU loader's for the
    same seed; the uploader's buffers take turns, so batches held on to stay intact."""
    gpu, cpu = _pair(prefetch=prefetch, batch_size=8, **kw)
    assert gpu.gpu is None and gpu.uploader is not None
    for epoch in (0, 3):
        gpu.set_epoch(epoch)
        cpu.set_epoch(epoch)
        held = list(gpu)   # every batch of the epoch kept: more batches than buffers
        assert len(held) > gpu.uploader.SLOTS
        for (xg, yg), (xc, yc) in zip(held, cpu, strict=True):
            assert backend.device_of(xg) == "cuda" and xg.dtype == xc.dtype
            np.testing.assert_allclose(_host(xg), xc, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(_host(yg), yc, rtol=1e-6, atol=1e-7)
    x, y = gpu.make_batch(1, 2)   # a batch made directly, as in the sharded loader
    np.testing.assert_allclose(_host(x), cpu.make_batch(1, 2)[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(_host(y), cpu.make_batch(1, 2)[1])


@pytest.mark.parametrize("kw", [dict(augment="randaugment"),
                                dict(augment="randaugment", mixup=0.8, cutmix=1.0)])
def test_host_augmented_batch_is_one_async_pinned_copy_and_no_sync(standin, kw):
    """Per batch: one host-to-device copy, from pinned memory on a stream of its own, two
    launches (the batch kernel, and the labels' copy or the soft targets), no sync."""
    made, per_batch = _counted(kw)
    assert made["h2d"] == 2 and made["launches"] == 0   # scale and shift, once
    for c in per_batch:
        assert (c["h2d"], c["h2d_pinned"], c["h2d_async"]) == (1, 1, 1)
        assert (c["launches"], c["d2h"], c["syncs"]) == (2, 0, 0)


def test_the_copy_is_ordered_by_events_on_the_gpu(standin, monkeypatch):
    """Without the compute stream's wait for the copy's event, or the copy stream's wait for
    the kernel that last read a buffer, the stand-in refuses the batch (StreamOrderError)."""
    x, y = _data()
    for skip in ("copy", "read"):
        loader = CIFARLoader(x, y, batch_size=8, seed=1, device="cuda",
                             augment="randaugment", prefetch=False)
        up = loader.uploader
        if skip == "copy":   # the compute stream does not wait for the upload
            monkeypatch.setattr(type(standin.cuda.get_current_stream()), "wait_event",
                                lambda self, event: None)
        else:                # the copy stream does not wait for the kernel that read a buffer
            monkeypatch.setattr(up.stream, "wait_event", lambda event: None, raising=False)
        with pytest.raises(standin.StreamOrderError):
            list(loader)
        monkeypatch.undo()


def test_randaugment_training_does_not_synchronise_in_a_step(standin):
    """``minivit train --device cuda --augment randaugment``: twice the steps, no more syncs."""
    from minivit.train import TrainConfig, fit  # noqa: PLC0415

    def syncs(train_limit):
        cfg = TrainConfig(model="vit_cifar", model_args={"depth": 1, "embed_dim": 16,
                                                         "num_heads": 2},
                          epochs=1, batch_size=8, eval_batch_size=16, train_limit=train_limit,
                          test_limit=16, progress=False, device="cuda", augment="randaugment")
        with cupy_standin.counting() as c:
            fit(cfg, log=lambda *a: None)
        return c["syncs"], c["h2d_async"]

    backend.is_cupy_available()   # its one-time probe reads a value back
    (s16, a16), (s48, a48) = syncs(16), syncs(48)
    assert s16 == s48 and (a16, a48) == (2, 6)   # one pinned asynchronous copy per batch


def test_resume_mid_epoch_and_sharding_are_exact(cuda):
    gpu, cpu = _pair(augment="standard", mixup=0.5)
    gpu.set_epoch(1)
    it = iter(gpu)
    next(it)
    state = gpu.state_dict()
    rest = [_host(b[0]) for b in it]
    fresh, _ = _pair(augment="standard", mixup=0.5)
    fresh.load_state_dict(state)
    for a, (b, _y) in zip(rest, fresh, strict=True):
        np.testing.assert_array_equal(a, _host(b))
    # each rank's share of a global batch: the CPU ShardedLoader's, made on the GPU
    for rank in range(2):
        sg, sc = ShardedLoader(gpu, rank, 2), ShardedLoader(cpu, rank, 2)
        for index in range(len(sg)):
            np.testing.assert_allclose(_host(sg.make_batch(0, index)[0]),
                                       sc.make_batch(0, index)[0], rtol=1e-6, atol=1e-6)


def test_train_uses_the_gpu_loader_and_resumes_exactly(cuda, tmp_path):
    """``fit`` on cuda makes its batches on the GPU; a run with crops, flips and mixup cut
    after epoch 1 and resumed ends with the weights of the uninterrupted run."""
    from minivit.checkpoint import load_checkpoint  # noqa: PLC0415
    from minivit.train import TrainConfig, _loaders, fit  # noqa: PLC0415

    def cfg(out):
        return TrainConfig(model="vit_cifar", model_args={"depth": 1, "embed_dim": 16,
                                                          "num_heads": 2},
                           epochs=2, batch_size=16, eval_batch_size=16, train_limit=32,
                           test_limit=16, out=str(out), progress=False, device="cuda",
                           augment="standard", mixup=0.5)

    _, train, test = _loaders(cfg(None))
    assert train.gpu is not None and test.gpu is not None
    fit(cfg(tmp_path / "full"), log=lambda *a: None)
    fit(cfg(tmp_path / "cut"), log=lambda *a: None, stop_after_epochs=1)
    fit(cfg(tmp_path / "cut"), resume=str(tmp_path / "cut"), log=lambda *a: None)
    full, cut = (load_checkpoint(tmp_path / r / "last.npz") for r in ("full", "cut"))
    for k, v in full["model"].items():
        np.testing.assert_array_equal(v, cut["model"][k], err_msg=k)

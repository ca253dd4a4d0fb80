"""CIFAR readers, the restricted unpickler and the dataset API (minivit.data.cifar)."""

from __future__ import annotations

import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from minivit.data import (
    CIFAR10_CLASSES, DATASETS, Dataset, DatasetError, UnsafePickleError, load_cifar10_subset,
    load_dataset, read_cifar10, read_cifar100, restricted_load,
)
from minivit.data.cifar import SUBSET_PATH

# the full CIFAR-10 archive, when the environment names one (the official file, or a rebuild)
FULL_TARBALL = Path(os.environ.get("MINIVIT_TEST_CIFAR10_TARBALL", "/nonexistent"))


# -- writing files in the official format ------------------------------------------------------
def py2_pickle(obj: object) -> bytes:
    """Pickle like Python 2 + NumPy 1 wrote the official files: protocol 2, py2 ``str`` opcodes
    (SHORT_BINSTRING/BINSTRING), and ``numpy.core.multiarray._reconstruct`` for arrays."""
    out = [b"\x80\x02"]

    def w(o: object) -> None:
        if isinstance(o, dict):
            out.append(b"}(")
            for k, v in o.items():
                w(k)
                w(v)
            out.append(b"u")
        elif isinstance(o, list):
            out.append(b"](")
            for v in o:
                w(v)
            out.append(b"e")
        elif isinstance(o, bytes):
            out.append(b"U" + bytes([len(o)]) + o if len(o) < 256
                       else b"T" + struct.pack("<i", len(o)) + o)
        elif isinstance(o, int):
            out.append(b"K" + bytes([o]) if 0 <= o < 256 else
                       b"M" + struct.pack("<H", o) if 0 <= o < 65536 else
                       b"J" + struct.pack("<i", o))
        elif isinstance(o, np.ndarray):
            assert o.dtype == np.uint8
            out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85")
            w(b"b")
            out.append(b"\x87R(K\x01(")  # TUPLE3 REDUCE, then the state: version 1, shape
            for d in o.shape:
                w(d)
            out.append(b"tcnumpy\ndtype\n")
            w(b"u1")
            out.append(b"K\x00K\x01\x87R(K\x03")
            w(b"|")
            out.append(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89")
            w(o.tobytes())
            out.append(b"tb")
        else:
            raise TypeError(type(o))

    w(obj)
    out.append(b".")
    return b"".join(out)


def py3_pickle(obj: object) -> bytes:
    """What ``pickle.dump(d, f, protocol=2)`` writes today (codecs.encode, numpy._core)."""
    return pickle.dumps(obj, protocol=2)


def to_rows(images: np.ndarray) -> np.ndarray:
    """HWC images -> official rows: the R plane (row-major 32x32), then G, then B."""
    return np.stack([np.concatenate([im[:, :, c].ravel() for c in range(3)]) for im in images])


def write_cifar10(root: Path, dump=py2_pickle, n: int = 3, seed: int = 0) -> tuple[Path, Dataset]:
    """Write a tiny ``cifar-10-batches-py/`` (n images per batch); return it and its content."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, n)]
        label = f"training batch {i + 1} of 5" if i < 5 else "testing batch 1 of 1"
        d = {b"batch_label": label.encode(), b"labels": y, b"data": to_rows(x),
             b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)]}
        (folder / name).write_bytes(dump(d))
        xs.append(x)
        ys.append(np.array(y))
    meta = {b"num_cases_per_batch": n, b"label_names": [c.encode() for c in CIFAR10_CLASSES],
            b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(dump(meta))
    ds = Dataset(np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5], CIFAR10_CLASSES)
    return folder, ds


FINE = [f"fine_{i}" for i in range(100)]
COARSE = [f"coarse_{i}" for i in range(20)]


def write_cifar100(root: Path, dump=py2_pickle, seed: int = 0) -> tuple[Path, dict]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    content = {}
    for split, n in (("train", 5), ("test", 3)):
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        coarse = [f // 5 for f in fine]
        d = {b"filenames": [b"f.png"] * n, b"batch_label": split.encode(), b"fine_labels": fine,
             b"coarse_labels": coarse, b"data": to_rows(x)}
        (folder / split).write_bytes(dump(d))
        content[split] = (x, np.array(fine), np.array(coarse))
    meta = {b"fine_label_names": [s.encode() for s in FINE],
            b"coarse_label_names": [s.encode() for s in COARSE]}
    (folder / "meta").write_bytes(dump(meta))
    return folder, content


def make_tar(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return dest


def assert_same(a: Dataset, b: Dataset) -> None:
    for k in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    assert a.class_names == b.class_names


# -- restricted unpickler ----------------------------------------------------------------------
class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class EvalEvil:
    def __reduce__(self):
        return eval, ("__import__('os').getcwd()",)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_hostile_pickle_runs_nothing(tmp_path, protocol):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({b"data": Evil(marker)}, protocol=protocol)
    with pytest.raises(UnsafePickleError, match="refusing to load global") as info:
        restricted_load(blob)
    assert "system" in str(info.value)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError, match="eval"):
        restricted_load(pickle.dumps(EvalEvil(), protocol=protocol))


def test_hostile_batch_file_in_folder(tmp_path):
    folder, _ = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(marker)}, protocol=2))
    with pytest.raises(UnsafePickleError) as info:
        read_cifar10(folder)
    assert "data_batch_3" in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, pickle.UnpicklingError) and isinstance(info.value, ValueError)
    assert not marker.exists()


def test_object_arrays_refused():
    blob = pickle.dumps(np.array([1, "x"], dtype=object), protocol=2)
    with pytest.raises(UnsafePickleError, match="object dtype"):
        restricted_load(blob)


@pytest.mark.parametrize("dump", [py2_pickle, py3_pickle])
def test_restricted_load_round_trip(dump):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 12)
    obj = restricted_load(dump({b"data": arr, b"labels": [1, 300, 70000], b"name": b"x"}))
    np.testing.assert_array_equal(obj[b"data"], arr)
    assert obj[b"labels"] == [1, 300, 70000] and obj[b"name"] == b"x"
    # and the standard unpickler agrees on our hand-written py2 bytes
    assert pickle.loads(dump({b"k": [1, 2]}), encoding="bytes") == {b"k": [1, 2]}


# -- CIFAR-10 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dump", [py2_pickle, py3_pickle])
def test_read_cifar10_folder_parent_and_archive(tmp_path, dump):
    folder, expected = write_cifar10(tmp_path / "d", dump)
    ds = read_cifar10(folder)
    assert ds.x_train.shape == (15, 32, 32, 3) and ds.x_train.dtype == np.uint8
    assert ds.y_train.dtype == np.int64 and ds.x_train.flags.c_contiguous
    assert ds.num_classes == 10
    assert_same(ds, expected)
    assert_same(read_cifar10(folder.parent), expected)
    archive = make_tar(folder, tmp_path / "cifar-10-python.tar.gz")
    assert_same(read_cifar10(archive), expected)
    assert_same(read_cifar10(tmp_path), expected)  # a folder holding the archive


def test_pixel_layout_is_r_then_g_then_b(tmp_path):
    folder, expected = write_cifar10(tmp_path)
    x = read_cifar10(folder).x_train
    rows = restricted_load((folder / "data_batch_1").read_bytes())[b"data"]
    for n, i, j, c in [(0, 0, 0, 0), (1, 5, 7, 1), (2, 31, 30, 2), (0, 12, 0, 2)]:
        assert x[n, i, j, c] == rows[n, c * 1024 + i * 32 + j]


def test_missing_file_is_a_clear_error(tmp_path):
    folder, _ = write_cifar10(tmp_path)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DatasetError, match=r"missing data_batch_4.*download") as info:
        read_cifar10(folder)
    assert str(folder) in str(info.value)


def test_truncated_batch_is_a_clear_error(tmp_path):
    folder, _ = write_cifar10(tmp_path)
    blob = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match=r"test_batch: not a readable CIFAR pickle.*corrupt"):
        read_cifar10(folder)


def test_corrupt_archive_is_a_clear_error(tmp_path):
    folder, _ = write_cifar10(tmp_path / "d")
    archive = make_tar(folder, tmp_path / "a.tar.gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="a.tar.gz") as info:
        read_cifar10(archive)
    assert not isinstance(info.value, UnsafePickleError)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive at all" * 10)
    with pytest.raises(DatasetError, match="not a readable .tar.gz"):
        read_cifar10(junk)


def test_wrong_content_is_a_clear_error(tmp_path):
    folder, _ = write_cifar10(tmp_path)
    (folder / "data_batch_2").write_bytes(py2_pickle({b"data": np.zeros((2, 100), np.uint8),
                                                      b"labels": [0, 1]}))
    with pytest.raises(DatasetError, match=r"data_batch_2.*uint8 \(N, 3072\)"):
        read_cifar10(folder)
    (folder / "data_batch_2").write_bytes(py2_pickle([1, 2]))
    with pytest.raises(DatasetError, match="expected a pickled dict"):
        read_cifar10(folder)


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="cifar-10-batches-py"):
        read_cifar10(tmp_path)


# -- CIFAR-100 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dump", [py2_pickle, py3_pickle])
def test_read_cifar100_fine_and_coarse(tmp_path, dump):
    folder, content = write_cifar100(tmp_path / "d", dump)
    fine = read_cifar100(folder)
    assert fine.class_names == tuple(FINE) and fine.num_classes == 100
    np.testing.assert_array_equal(fine.x_train, content["train"][0])
    np.testing.assert_array_equal(fine.y_train, content["train"][1])
    np.testing.assert_array_equal(fine.x_test, content["test"][0])
    np.testing.assert_array_equal(fine.y_test, content["test"][1])
    coarse = read_cifar100(folder, label_mode="coarse")
    assert coarse.class_names == tuple(COARSE)
    np.testing.assert_array_equal(coarse.y_train, content["train"][2])
    np.testing.assert_array_equal(coarse.y_test, content["test"][2])
    archive = make_tar(folder, tmp_path / "cifar-100-python.tar.gz")
    assert_same(read_cifar100(archive, "coarse"), coarse)
    assert_same(load_dataset("cifar100", data=archive), fine)
    assert_same(load_dataset("cifar100", data=tmp_path / "d", label_mode="coarse"), coarse)
    with pytest.raises(ValueError, match="label_mode"):
        read_cifar100(folder, label_mode="medium")


def test_cifar100_labels_out_of_range(tmp_path):
    folder, _ = write_cifar100(tmp_path)
    d = restricted_load((folder / "test").read_bytes())
    d[b"fine_labels"][0] = 100
    (folder / "test").write_bytes(py3_pickle(d))
    with pytest.raises(DatasetError, match=r"labels in \[0, 100\)"):
        read_cifar100(folder)


# -- dataset API -------------------------------------------------------------------------------
def test_bundled_subset():
    assert SUBSET_PATH.stat().st_size < 15 * 2**20
    ds = load_dataset("cifar10-subset")
    x_train, y_train, x_test, y_test, names = ds
    assert x_train.shape == (4000, 32, 32, 3) and x_test.shape == (1000, 32, 32, 3)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    assert names == CIFAR10_CLASSES and ds.num_classes == 10
    # published official values: data_batch_1 rows 0 and 1 (first 3 and last 3 bytes of the
    # row, i.e. R of the first pixels and B of the last ones), and the first labels
    rows = to_rows(x_train[:2])
    np.testing.assert_array_equal(rows[0, :3], [59, 43, 50])
    np.testing.assert_array_equal(rows[0, -3:], [140, 84, 72])
    np.testing.assert_array_equal(rows[1, :3], [154, 126, 105])
    np.testing.assert_array_equal(rows[1, -3:], [139, 142, 144])
    np.testing.assert_array_equal(y_train[:10], [6, 9, 9, 4, 1, 1, 2, 7, 8, 3])
    np.testing.assert_array_equal(y_test[:10], [3, 8, 8, 0, 6, 6, 1, 6, 3, 1])
    assert np.bincount(y_train, minlength=10).min() > 300


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="cifar10-subset, cifar10, cifar100"):
        load_dataset("mnist")
    assert DATASETS == ("cifar10-subset", "cifar10", "cifar100")


def test_user_path_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset("cifar10", data=tmp_path / "nope")
    with pytest.raises(DatasetError, match="file not found"):
        load_cifar10_subset(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros(3))
    with pytest.raises(DatasetError, match="bad.npz"):
        load_cifar10_subset(bad)


def test_cache_folder_is_used(tmp_path, monkeypatch):
    _, expected = write_cifar10(tmp_path)
    monkeypatch.setenv("MINIVIT_DATA", str(tmp_path))
    assert_same(load_dataset("cifar10", download=False), expected)
    monkeypatch.setenv("MINIVIT_DATA", str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="download=False"):
        load_dataset("cifar10", download=False)


@pytest.mark.slow
@pytest.mark.skipif(not FULL_TARBALL.is_file(), reason="set MINIVIT_TEST_CIFAR10_TARBALL to a "
                    "cifar-10-python.tar.gz to run it")
def test_real_tarball_matches_subset_labels():
    ds = load_dataset("cifar10", data=FULL_TARBALL)
    assert ds.x_train.shape == (50000, 32, 32, 3) and ds.x_test.shape == (10000, 32, 32, 3)
    assert ds.class_names == CIFAR10_CLASSES
    subset = load_cifar10_subset()
    np.testing.assert_array_equal(ds.y_train[:4000], subset.y_train)
    np.testing.assert_array_equal(ds.y_test[:1000], subset.y_test)
    assert np.all(np.bincount(ds.y_train, minlength=10) == 5000)
    # the official pixels exactly, or a JPEG rebuild: close but not equal (about 30 dB PSNR)
    err = np.abs(ds.x_train[:4000].astype(np.int16) - subset.x_train).mean()
    assert err == 0 or 2 < err < 10


def test_ndarray_constructor_cannot_be_called():
    # GLOBAL numpy.ndarray, then REDUCE it with a shape: only usable as _reconstruct's subtype
    blob = b"\x80\x02cnumpy\nndarray\nK\x03\x85\x85R."
    with pytest.raises(UnsafePickleError):
        restricted_load(blob)
    # _reconstruct with an object dtype
    blob = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01O"
            b"\x87R.")
    with pytest.raises(UnsafePickleError, match="dtype"):
        restricted_load(blob)


def test_cifar100_is_normalised_with_its_own_mean_and_std(tmp_path, monkeypatch):
    from minivit import train
    from minivit.data import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD

    folder, _ = write_cifar100(tmp_path / "d")
    for mode in ("fine", "coarse"):
        ds = load_dataset("cifar100", data=folder, label_mode=mode)
        assert ds.mean == CIFAR100_MEAN and ds.std == CIFAR100_STD
    assert np.allclose(np.array(CIFAR100_MEAN) * 255, (129.3, 124.1, 112.4))
    assert np.allclose(np.array(CIFAR100_STD) * 255, (68.2, 65.4, 70.4))
    sub = load_dataset("cifar10-subset")
    assert sub.mean == CIFAR10_MEAN and sub.std == CIFAR10_STD
    # the training loop's loaders use them
    cfg = train.TrainConfig(dataset="cifar100", data=str(folder), batch_size=4, progress=False)
    _, tr, te = train._loaders(cfg)
    assert tr.mean == te.mean == CIFAR100_MEAN and tr.std == te.std == CIFAR100_STD

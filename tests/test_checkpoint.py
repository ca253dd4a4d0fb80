"""Checkpoint files: round trip of nested trees, no unpickling, atomic writes."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

import minivit.checkpoint as ckpt_mod
from minivit.checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint


def sample_tree() -> dict:
    rng = np.random.default_rng(0)
    return {
        "format": "test-1",
        "epoch": 3,
        "best_acc": 0.625,
        "nothing": None,
        "flag": True,
        "model": {"blocks.0.attn.qkv.weight": rng.standard_normal((6, 2), dtype=np.float32),
                  "bn.num_batches_tracked": np.array(7, dtype=np.int64),
                  "head.bias": np.zeros(0, dtype=np.float64)},
        "optimizer": {"state": {"0": {"step": np.array(3), "exp_avg": np.ones(2, np.float32)}},
                      "param_groups": [{"lr": 1e-3, "betas": [0.9, 0.999], "params": [0, 1]}]},
        "rng": {"numpy": {"bit_generator": "PCG64", "state": {"state": 2 ** 127 + 5,
                                                              "inc": 12345}}},
        "list_of_arrays": [np.arange(3, dtype=np.uint8), "text", 1.5],
    }


def assert_same(a, b):
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    else:
        assert type(a) is type(b) and a == b


def test_round_trip_keeps_structure_dtypes_and_big_integers(tmp_path):
    tree = sample_tree()
    save_checkpoint(tmp_path / "c.npz", tree)
    assert_same(tree, load_checkpoint(tmp_path / "c.npz"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]


def test_arrays_are_npz_members_and_the_rest_is_json(tmp_path):
    save_checkpoint(tmp_path / "c.npz", sample_tree())
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:
        assert "model/blocks.0.attn.qkv.weight" in z.files
        assert "optimizer/state/0/exp_avg" in z.files
        assert "__meta__" in z.files and z["__meta__"].dtype == np.uint8


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_write_that_fails_midway_keeps_the_old_file_and_leaves_no_temp_file(
        tmp_path, monkeypatch, exc):
    path = tmp_path / "last.npz"
    save_checkpoint(path, {"epoch": 1, "w": np.ones(4)})
    before = path.read_bytes()

    def half_a_zip(file, **arrays):
        file.write(before[: len(before) // 2])
        raise exc

    monkeypatch.setattr(ckpt_mod.np, "savez", half_a_zip)
    with pytest.raises(type(exc)):
        save_checkpoint(path, {"epoch": 2, "w": np.zeros(4)})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.npz"]
    assert load_checkpoint(path)["epoch"] == 1


def test_atomic_write_creates_and_replaces(tmp_path):
    path = tmp_path / "metrics.jsonl"
    atomic_write(path, lambda f: f.write(b"one\n"))
    atomic_write(path, lambda f: f.write(b"two\n"))
    assert path.read_bytes() == b"two\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_missing_and_junk_files_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "none.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip file at all")
    with pytest.raises(CheckpointError, match="not a readable minivit checkpoint"):
        load_checkpoint(junk)
    truncated = tmp_path / "truncated.npz"
    save_checkpoint(truncated, sample_tree())
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.ones(3))
    with pytest.raises(CheckpointError, match="no __meta__"):
        load_checkpoint(plain)


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pickled code ran')",))


def test_a_pickled_object_array_is_refused_without_running_code(tmp_path):
    """An ``.npz`` member holding a pickle (object array) is never unpickled."""
    path = tmp_path / "hostile.npz"
    payload = np.empty(1, dtype=object)
    payload[0] = _Boom()
    buf = io.BytesIO()
    np.save(buf, payload, allow_pickle=True)
    meta = np.frombuffer(b'{"x": {"__array__": "x"}}', dtype=np.uint8)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", buf.getvalue())
        mbuf = io.BytesIO()
        np.save(mbuf, meta)
        z.writestr("__meta__.npy", mbuf.getvalue())
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(path)

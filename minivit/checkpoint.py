"""Checkpoints: one ``.npz`` file, loaded with ``allow_pickle=False``, written atomically.

A checkpoint is a nested dict (model state, optimizer state, schedule, epoch, RNG states...).
Array leaves are stored as ``.npz`` members under their slash-joined path
(``model/blocks.0.attn.qkv.weight``); everything else (numbers, strings, lists) goes into one
JSON document stored as the member ``__meta__``. Nothing is unpickled on load, so a
checkpoint from an untrusted source cannot run code.

The file is written to a temporary name in the same folder, flushed to disk, then renamed
over the old one (``os.replace`` is atomic) and the folder flushed, so a crash or a kill
during a save leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .autograd import backend
from .runfolder import crash_point, fsync_dir, show

_META = "__meta__"
_ARRAY = "__array__"  # marks where an array was taken out of the JSON document


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not what was expected."""


def _split(tree, prefix: str, arrays: dict):
    """Move array leaves of ``tree`` into ``arrays``; return the JSON-able rest."""
    if isinstance(tree, dict):
        return {str(k): _split(v, f"{prefix}/{k}" if prefix else str(k), arrays)
                for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_split(v, f"{prefix}/{i}", arrays) for i, v in enumerate(tree)]
    if backend.is_array(tree) or isinstance(tree, np.generic):
        arrays[prefix] = backend.as_numpy(tree)
        return {_ARRAY: prefix}
    return tree


def _join(tree, arrays, path):
    if isinstance(tree, dict):
        if set(tree) == {_ARRAY}:
            if not isinstance(tree[_ARRAY], str) or tree[_ARRAY] not in arrays:
                raise CheckpointError(f"{show(path)}: its {_META} refers to an array "
                                      f"{str(tree[_ARRAY])[:60]!r} that the file does not hold")
            return arrays[tree[_ARRAY]]
        return {k: _join(v, arrays, path) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join(v, arrays, path) for v in tree]
    return tree


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            crash_point(f"{path.name}:written")  # tests: kills at each stage of a save
            os.fsync(f.fileno())
        crash_point(f"{path.name}:synced")
        os.replace(tmp, path)
        tmp = None
        crash_point(f"{path.name}:renamed")
        fsync_dir(path.parent)  # the rename itself reaches the disk
    except OSError as exc:  # name the file: "No space left on device" alone says too little
        if exc.errno is None:
            raise OSError(f"{show(path)}: {exc}") from None
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(path: str | os.PathLike, tree: dict) -> None:
    """Save a nested dict of arrays and plain values to ``path`` (``.npz``), atomically."""
    arrays: dict[str, np.ndarray] = {}
    meta = _split(tree, "", arrays)
    payload = dict(arrays)
    payload[_META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **payload))


def read_npz(path: Path, what: str) -> dict:
    """Every array of the existing ``.npz`` file ``path`` (pickles refused); a
    ``CheckpointError`` saying ``{path}: not a readable {what}`` if it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:
        raise CheckpointError(f"{show(path)}: not a readable {what} ({exc})") from None


def is_checkpoint(arrays: dict) -> bool:
    """Whether arrays read from an ``.npz`` are a checkpoint ``save_checkpoint`` wrote."""
    return _META in arrays


def tree_leaves(tree, prefix: str = ""):
    """(path, value) of every leaf of a nested dict/list checkpoint tree, paths joined by "/"
    (``{"model": {"w": a}}`` gives ``("/model/w", a)``)."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from tree_leaves(v, f"{prefix}/{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from tree_leaves(v, f"{prefix}/{i}")
    else:
        yield prefix, tree


def checkpoint_tree(arrays: dict, path: Path) -> dict:
    """The tree ``save_checkpoint`` was given, from the arrays of its file (read by ``read_npz``)."""
    if not is_checkpoint(arrays):
        raise CheckpointError(f"{show(path)}: not a minivit checkpoint (no {_META} entry)")
    arrays = dict(arrays)
    raw = arrays.pop(_META)
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{show(path)}: its {_META} entry is not the JSON document "
                              f"save_checkpoint writes (a 1-D uint8 .npy array)")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"{show(path)}: its {_META} entry is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{show(path)}: its {_META} entry is a JSON "
                              f"{type(meta).__name__}, expected an object")
    return _join(meta, arrays, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load what ``save_checkpoint`` wrote (arrays come back as NumPy arrays)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{show(path)}: no such checkpoint file")
    return checkpoint_tree(read_npz(path, "minivit checkpoint"), path)

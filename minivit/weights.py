"""Model weights in and out: a state dict (parameter name -> array, timm's names) as a
``.safetensors`` file (the format timm publishes its weights in) or an ``.npz`` file.

    from minivit.weights import load_state_dict_file, save_state_dict_file
    save_state_dict_file("model.safetensors", model.state_dict())
    model.load_state_dict(load_state_dict_file("model.safetensors"))

``.safetensors`` goes through the ``safetensors`` package's NumPy API (``pip install
safetensors``, or the ``safetensors`` extra of minivit): a header of names, dtypes and shapes,
then the raw bytes, so nothing is unpickled. A ``.npz`` may also be a minivit training
checkpoint (``last.npz``): its model weights are taken.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .autograd import backend
from .checkpoint import CheckpointError, atomic_write, checkpoint_tree, is_checkpoint, read_npz

SUFFIXES = (".safetensors", ".npz")


def _safetensors_numpy(path: Path):
    try:
        import safetensors.numpy as st  # noqa: PLC0415 (an optional extra)
    except ImportError:
        raise CheckpointError(f"{path}: reading or writing .safetensors needs the safetensors "
                              f"package: pip install safetensors") from None
    return st


def _check_suffix(path: Path) -> None:
    if path.suffix not in SUFFIXES:
        raise CheckpointError(f"{path}: unknown weights format {path.suffix or '(no suffix)'!r}; "
                              f"expected a .safetensors or .npz file")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state dict stored in ``path`` (``.safetensors``, a plain ``.npz`` state dict, or a
    minivit checkpoint ``.npz``), as NumPy arrays by dotted name."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    _check_suffix(path)
    if path.suffix == ".safetensors":
        st = _safetensors_numpy(path)
        try:
            return st.load_file(str(path))
        except Exception as exc:  # the package raises its own error types
            raise CheckpointError(f"{path}: not a readable .safetensors file ({exc})") from None
    arrays = read_npz(path, ".npz file")
    if is_checkpoint(arrays):
        return dict(checkpoint_tree(arrays, path)["model"])
    return arrays


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` header (``{}`` for other files), e.g. the
    ``model`` name that ``minivit export`` records."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    _safetensors_numpy(path)   # the package, or a one-line error saying how to install it
    from safetensors import safe_open  # noqa: PLC0415

    try:
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable .safetensors file ({exc})") from None


def save_state_dict_file(path: str | os.PathLike, state_dict: dict,
                         metadata: dict[str, str] | None = None) -> Path:
    """Write ``state_dict`` (arrays or Tensors by name) to ``path``, atomically; the format
    follows the suffix (``.safetensors`` or ``.npz``). ``metadata``: strings stored in the
    safetensors header (ignored for ``.npz``)."""
    path = Path(path)
    _check_suffix(path)
    arrays = {k: np.require(backend.as_numpy(getattr(v, "data", v)), requirements="C")
              for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        st = _safetensors_numpy(path)
        meta = {"format": "np", **{str(k): str(v) for k, v in (metadata or {}).items()}}
        blob = st.save(arrays, metadata=meta)
        atomic_write(path, lambda f: f.write(blob))
    else:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def _names(kind: str, names: list[str], show: int = 8) -> str:
    more = f", ... and {len(names) - show} more" if len(names) > show else ""
    return f"{kind} ({len(names)}): {', '.join(names[:show])}{more}"


def mismatch(model, state: dict) -> str:
    """Why ``state`` does not load strictly into ``model``, in one line: missing keys,
    unexpected keys and wrong shapes, each listing its first names ("" if it fits)."""
    own = {k: t.shape for k, t in model._state_items()}
    problems = []
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} in the file vs {own[k]} in the model"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k])]
    for kind, names in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("wrong shapes", shapes)):
        if names:
            problems.append(_names(kind, names))
    return "; ".join(problems)


def load_into(model, path: str | os.PathLike, what: str) -> None:
    """Load the weights file ``path`` into ``model`` (strict); a one-line ``CheckpointError``
    naming ``what`` (the model) and listing missing/unexpected keys if they do not fit."""
    state = load_state_dict_file(path)
    problems = mismatch(model, state)
    if problems:
        raise CheckpointError(f"{path} does not fit {what}: {problems}")
    model.load_state_dict(state, strict=True)

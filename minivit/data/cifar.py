"""CIFAR-10 / CIFAR-100 in the official "python version" format, and the dataset API.

The official files are pickles. They are read with :func:`restricted_load`, which accepts only
the few NumPy globals the format needs, so a hostile file raises :class:`UnsafePickleError`
instead of running code. Images come back as uint8 ``(N, 32, 32, 3)`` (HWC), labels as int64.

    >>> ds = load_dataset("cifar10-subset")          # bundled, offline
    >>> x_train, y_train, x_test, y_test, names = ds
    >>> ds.x_train.shape, ds.num_classes
    ((4000, 32, 32, 3), 10)
"""

from __future__ import annotations

import io
import os
import pickle
import posixpath
import tarfile
import zlib
from pathlib import Path
from typing import IO, Any, Callable, NamedTuple

import numpy as np

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "NUM_CLASSES",
    "Dataset",
    "DatasetError",
    "UnsafePickleError",
    "load_cifar10_subset",
    "load_dataset",
    "read_cifar10",
    "read_cifar100",
    "restricted_load",
]

NUM_CLASSES = {"cifar10-subset": 10, "cifar10": 10, "cifar100": 100}  # fine labels for CIFAR-100
DATASETS = tuple(NUM_CLASSES)   # the names load_dataset knows
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
SUBSET_PATH = Path(__file__).with_name("cifar10_subset.npz")

# name -> (folder inside the archive, archive file name, train files, test files, meta file)
_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta"),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",), "meta"),
}


class DatasetError(ValueError):
    """A data set file is missing, corrupt or not in the expected format."""


class UnsafePickleError(DatasetError, pickle.UnpicklingError):
    """A pickle asked for a global that the CIFAR format never needs."""


class Dataset(NamedTuple):
    """Both splits of a data set; unpacks as ``x_train, y_train, x_test, y_test, class_names``."""

    x_train: np.ndarray  # uint8 (N, 32, 32, 3)
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """The number of classes (``len(class_names)``)."""
        return len(self.class_names)

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel mean of the training images in [0, 1]: CIFAR-100's own for CIFAR-100
        (100 fine or 20 coarse labels), CIFAR-10's otherwise
        (``CIFARLoader(..., mean=ds.mean, std=ds.std)``)."""
        from .transforms import CIFAR10_MEAN, CIFAR100_MEAN  # noqa: PLC0415

        return CIFAR100_MEAN if self.num_classes in (20, 100) else CIFAR10_MEAN

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel standard deviation of the training images in [0, 1] (see ``mean``)."""
        from .transforms import CIFAR10_STD, CIFAR100_STD  # noqa: PLC0415

        return CIFAR100_STD if self.num_classes in (20, 100) else CIFAR10_STD


# -- restricted unpickling ---------------------------------------------------------------------
def _text(v: Any) -> str:
    return v.decode("latin1") if isinstance(v, bytes) else str(v)


try:  # NumPy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


class _NDArrayToken:
    """Stands for ``numpy.ndarray`` in a pickle: usable only as ``_reconstruct``'s subtype,
    so the pickle cannot call the ndarray constructor itself."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_NDArrayToken":
        raise UnsafePickleError("calling numpy.ndarray(...) refused")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _NDArrayToken:
        raise UnsafePickleError(f"array reconstruction with subtype {subtype!r} refused")
    if not isinstance(dtype, (str, bytes)) or np.dtype(_text(dtype)).hasobject:
        raise UnsafePickleError(f"array reconstruction with dtype {dtype!r} refused")
    return _np_reconstruct(np.ndarray, shape, dtype)


def _dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(spec, (str, bytes)):
        raise UnsafePickleError(f"dtype from {type(spec).__name__} refused")
    dt = np.dtype(_text(spec), align=bool(align))
    if dt.hasobject:
        raise UnsafePickleError("object dtype refused")
    return dt


def _encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 writes bytes in protocol 2 as codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding.lower().replace("-", "").replace("_", "") not in (
        "latin1", "iso88591"
    ):
        raise UnsafePickleError(f"codecs.encode(..., {encoding!r}) refused")
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDArrayToken,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    ("codecs", "encode"): _encode,
}


_REFERENCE_FLAGS = 0x01 | 0x02 | 0x04  # NPY_ITEM_REFCOUNT, NPY_LIST_PICKLE, NPY_ITEM_IS_POINTER


def _check_build(inst: Any, state: Any) -> None:
    """BUILD (``inst.__setstate__(state)``) is allowed on a plain dtype and on an array of a
    plain dtype only: a dtype's state can set the object/reference flags after ``_dtype``
    checked it, so the state is checked here, before numpy sees it."""
    if isinstance(inst, np.dtype):
        ok = (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
              and state[2] is None and state[3] is None and state[4] is None
              and type(state[7]) is int and not state[7] & _REFERENCE_FLAGS)
        if not ok:
            raise UnsafePickleError(f"dtype state {str(state)[:80]} refused (it carries object "
                                    "or reference flags, or fields)")
    elif isinstance(inst, np.ndarray):
        ok = (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], np.dtype)
              and not state[2].hasobject and isinstance(state[4], (bytes, bytearray)))
        if not ok:
            raise UnsafePickleError("array state refused (not a plain dtype with raw bytes)")
    else:
        raise UnsafePickleError(f"setting the state of a {type(inst).__name__} refused")


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (its BUILD can be checked; the C one's cannot), allowing
    only the globals of ``_ALLOWED``."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def load_build(self) -> None:
        _check_build(self.stack[-2], self.stack[-1])
        pickle._Unpickler.load_build(self)
        built = self.stack[-1]
        if getattr(built, "hasobject", False) or getattr(getattr(built, "dtype", None),
                                                         "hasobject", False):
            raise UnsafePickleError("object dtype refused")

    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: CIFAR files only hold dicts, lists "
                "and uint8 NumPy arrays, so this file is not an official CIFAR file and may be "
                "malicious"
            ) from None


def restricted_load(file: IO[bytes] | bytes) -> Any:
    """Unpickle ``file`` (a binary file object or bytes), allowing only NumPy arrays of plain
    dtypes besides builtin containers. Strings stay ``bytes`` (``encoding='bytes'``).

    Raises:
        UnsafePickleError: the pickle asks for any other global (it is never called).
    """
    if isinstance(file, (bytes, bytearray, memoryview)):
        file = io.BytesIO(file)
    return _RestrictedUnpickler(file, encoding="bytes").load()


# -- reading the official files ----------------------------------------------------------------
def _unpickle(f: IO[bytes], source: str) -> dict[str, Any]:
    try:
        obj = restricted_load(f)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{source}: {e}") from None
    except Exception as e:
        raise DatasetError(
            f"{source}: not a readable CIFAR pickle ({type(e).__name__}: {e}); the file is "
            "probably truncated or corrupt: delete it and download it again"
        ) from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{source}: expected a pickled dict, found {type(obj).__name__}")
    return {_text(k): v for k, v in obj.items()}


def _open_source(path: Path, name: str) -> tuple[Path, bool]:
    """Return (folder or archive, is_archive) for a user path: the batch folder itself, a
    folder holding it or the archive, or the archive."""
    folder, archive, train, _, _ = _LAYOUT[name]
    if path.is_file():
        return path, True
    if path.is_dir():
        if (path / train[0]).exists() or path.name == folder:
            return path, False
        if (path / folder).is_dir():
            return path / folder, False
        if (path / archive).is_file():
            return path / archive, True
    raise DatasetError(
        f"{path}: no {name.upper()} data found; expected the folder {folder}/ (from the official "
        f"python version), a folder containing it, or the archive {archive}"
    )


def _read_files(path: Path, name: str) -> dict[str, dict[str, Any]]:
    """Unpickle the train, test and meta files of ``name`` from a folder or a tar archive."""
    folder, _, train, test, meta = _LAYOUT[name]
    wanted = (*train, *test, meta)
    src, is_archive = _open_source(path, name)
    found: dict[str, dict[str, Any]] = {}
    if not is_archive:
        missing = [w for w in wanted if not (src / w).is_file()]
        if missing:
            raise DatasetError(
                f"{src}: missing {', '.join(missing)}; a complete {folder}/ holds "
                f"{', '.join(wanted)}: download the data set again"
            )
        for w in wanted:
            with open(src / w, "rb") as f:
                found[w] = _unpickle(f, str(src / w))
        return found
    try:
        with tarfile.open(src, "r:*") as tar:
            for member in tar:  # one sequential pass: no seeking back in a .gz stream
                base = posixpath.basename(member.name)
                if member.isfile() and base in wanted and base not in found:
                    f = tar.extractfile(member)
                    assert f is not None
                    found[base] = _unpickle(f, f"{src}:{member.name}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DatasetError(
            f"{src}: not a readable .tar.gz archive ({type(e).__name__}: {e}); it is probably "
            "truncated or corrupt: delete it and download it again"
        ) from None
    missing = [w for w in wanted if w not in found]
    if missing:
        raise DatasetError(
            f"{src}: the archive lacks {', '.join(folder + '/' + m for m in missing)}; "
            f"expected the official {name.upper()} python-version archive"
        )
    return found


def _images_labels(
    batches: list[tuple[str, dict[str, Any]]], label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for source, d in batches:
        data, labels = d.get("data"), d.get(label_key)
        if not isinstance(data, np.ndarray) or labels is None:
            raise DatasetError(f"{source}: expected keys 'data' (array) and {label_key!r}")
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DatasetError(
                f"{source}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)"
            )
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(y) != len(data) or (len(y) and (y.min() < 0 or y.max() >= num_classes)):
            raise DatasetError(
                f"{source}: expected {len(data)} labels in [0, {num_classes}), "
                f"found {len(y)} in [{y.min(initial=0)}, {y.max(initial=0)}]"
            )
        xs.append(data)
        ys.append(y)
    x = np.concatenate(xs).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), np.concatenate(ys)


def _class_names(meta: dict[str, Any], key: str, source: str, n: int) -> tuple[str, ...]:
    names = meta.get(key)
    if not isinstance(names, list) or len(names) != n:
        raise DatasetError(f"{source}: expected {key!r}, a list of {n} class names")
    return tuple(_text(v) for v in names)


def read_cifar10(path: str | os.PathLike[str]) -> Dataset:
    """Read CIFAR-10 from ``cifar-10-batches-py/``, a folder holding it, or the ``.tar.gz``
    (read in memory, never extracted). No checksum is checked: any faithful copy is accepted."""
    path = Path(path).expanduser()
    folder, _, train, test, meta = _LAYOUT["cifar10"]
    files = _read_files(path, "cifar10")
    x_train, y_train = _images_labels([(f, files[f]) for f in train], "labels", 10)
    x_test, y_test = _images_labels([(f, files[f]) for f in test], "labels", 10)
    names = _class_names(files[meta], "label_names", f"{path}: {meta}", 10)
    return Dataset(x_train, y_train, x_test, y_test, names)


def read_cifar100(path: str | os.PathLike[str], label_mode: str = "fine") -> Dataset:
    """Read CIFAR-100 from ``cifar-100-python/``, a folder holding it, or the ``.tar.gz``.

    Args:
        label_mode: ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses).
    """
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    path = Path(path).expanduser()
    n = 100 if label_mode == "fine" else 20
    files = _read_files(path, "cifar100")
    key = f"{label_mode}_labels"
    x_train, y_train = _images_labels([("train", files["train"])], key, n)
    x_test, y_test = _images_labels([("test", files["test"])], key, n)
    names = _class_names(files["meta"], f"{label_mode}_label_names", f"{path}: meta", n)
    return Dataset(x_train, y_train, x_test, y_test, names)


def load_cifar10_subset(path: str | os.PathLike[str] | None = None) -> Dataset:
    """The bundled exact-pixel CIFAR-10 subset: train images 0-3999 and test images 0-999."""
    path = SUBSET_PATH if path is None else Path(path).expanduser()
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in keys}
    except FileNotFoundError:
        raise DatasetError(
            f"{path}: file not found; expected an .npz with arrays {', '.join(keys)} "
            "(reinstall minivit to restore the bundled subset)"
        ) from None
    except (KeyError, ValueError, OSError, EOFError, zlib.error) as e:  # EOF: an empty file
        raise DatasetError(
            f"{path}: not a readable CIFAR subset ({type(e).__name__}: {e}); expected an .npz "
            f"with arrays {', '.join(keys)}"
        ) from None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.shape[1:] != (32, 32, 3) or y.shape != (len(x),):
            raise DatasetError(f"{path}: x_{split}/y_{split} have the wrong shape or dtype")
    return Dataset(
        arrays["x_train"], arrays["y_train"].astype(np.int64),
        arrays["x_test"], arrays["y_test"].astype(np.int64), CIFAR10_CLASSES,
    )


def load_dataset(
    name: str = "cifar10-subset",
    data: str | os.PathLike[str] | None = None,
    *,
    label_mode: str = "fine",
    download: bool = True,
    progress: bool = True,
) -> Dataset:
    """Load a data set by name: ``"cifar10-subset"`` (bundled, offline), ``"cifar10"`` or
    ``"cifar100"``.

    Args:
        data: a folder or archive given by the user, used as is (never checked against the
            official md5). Without it, the cache folder (``$MINIVIT_DATA``, else
            ``~/.cache/minivit``) is used, and the official archive is downloaded there if missing.
        label_mode: for CIFAR-100, ``"fine"`` or ``"coarse"``.
        download: allow downloading into the cache folder.
        progress: show a progress bar while downloading.

    Raises:
        ValueError: unknown name.  DatasetError: missing or corrupt files.
    """
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known names: {', '.join(DATASETS)}")
    if key == "cifar10-subset":
        return load_cifar10_subset(data)
    reader = read_cifar10 if key == "cifar10" else (
        lambda p: read_cifar100(p, label_mode=label_mode))
    if data is not None:
        path = Path(data).expanduser()
        if not path.exists():
            raise DatasetError(f"{path}: no such file or folder (given as the {key} data)")
        return reader(path)

    from .download import download_cifar, default_data_dir  # lazy: download imports this module

    root = default_data_dir()
    folder, archive = _LAYOUT[key][:2]
    for candidate in (root / folder, root / archive):
        if candidate.exists():
            return reader(candidate)
    if not download:
        raise DatasetError(
            f"{root}: neither {folder}/ nor {archive} found and download=False; pass data=PATH, "
            "set MINIVIT_DATA, or allow the download"
        )
    return reader(download_cifar(key, root, progress=progress))

"""A DataLoader for in-memory uint8 image arrays: shuffle, batch, augment, prefetch.

    >>> train = CIFARLoader(ds.x_train, ds.y_train, batch_size=128, augment="standard")
    >>> for epoch in range(epochs):
    ...     for xb, yb in train:        # xb float32 (B, 3, 32, 32), yb int64 (B,)
    ...         ...

Randomness is a pure function of ``(seed, epoch, batch index)``: the shuffle of an epoch comes
from ``default_rng([seed, epoch, 0])`` and batch ``b``'s augmentation and mixing from
``default_rng([seed, epoch, 1, b])``. So batches do not depend on prefetching, on what ran
before, or on the process: ``state_dict()`` (epoch and position) is all a checkpoint needs to
reproduce the rest of the run exactly.

With ``device="cuda"`` the uint8 images are uploaded to the GPU once, and each batch is built
there (``minivit/data/gpu.py``): the host makes the same draws from the same generator as on
the CPU (order, crop offsets, flips, mixup/cutmix), uploads them with the indices and labels in
one small copy, and one kernel crops, flips, normalises (and mixes) the batch; a second writes
mixup/cutmix's soft targets. Batches then equal the CPU's up to float rounding. RandAugment or a
custom ``augment`` callable augments on the CPU (in the prefetch thread, as for CPU batches);
the uint8 batch then goes up through a pinned buffer in an asynchronous copy on a stream of
its own (``gpu.PinnedUploader``), and the same kernel normalises and mixes it.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator, Sequence

import numpy as np

from .transforms import (CIFAR10_MEAN, CIFAR10_STD, Compose, RandomCrop, RandomHorizontalFlip,
                         Transform, cutmix, cutmix_draw, make_augment, mixup,
                         normalise_coefficients, one_hot, to_float_nchw)

__all__ = ["CIFARLoader"]

Batch = tuple[np.ndarray, np.ndarray]


class _Prefetcher:
    """Run an iterator in a daemon thread, ``depth`` items ahead of the consumer."""

    def __init__(self, source: Iterator[Batch], depth: int = 2) -> None:
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source,), daemon=True,
                                        name="minivit-prefetch")
        self._thread.start()

    def _put(self, message: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def _run(self, source: Iterator[Batch]) -> None:
        try:
            for item in source:
                if not self._put(("item", item)):
                    return
            self._put(("done", None))
        except BaseException as e:  # handed to the consumer, raised there
            self._put(("error", e))

    def __iter__(self) -> Iterator[Batch]:
        try:
            while True:
                kind, value = self._queue.get()
                if kind == "done":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            self.close()

    def close(self) -> None:
        """Stop the producer thread and wait for it (it finishes at most one batch)."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)


def _gpu_plan(augment, shape) -> tuple | None:
    """``(crop, flip)`` (either None) when ``augment`` is what the GPU batch kernel does: none,
    or the standard crop with zero padding to the image's own size and/or flip; else None."""
    if augment is None:
        return None, None
    parts = augment.transforms if type(augment) is Compose else [augment]
    crop = flip = None
    for t in parts:
        if type(t) is RandomCrop and crop is None and flip is None and t.fill == 0 \
                and t.size == shape[1] == shape[2]:
            crop = t
        elif type(t) is RandomHorizontalFlip and flip is None:
            flip = t
        else:
            return None
    return crop, flip


class CIFARLoader:
    """Iterate over ``(x, y)`` batches of a uint8 image array.

    Args:
        x: uint8 images ``(N, H, W, C)``.
        y: integer labels ``(N,)``.
        batch_size: images per batch.
        shuffle: a new random order every epoch.
        drop_last: drop the last incomplete batch.
        seed: seeds shuffling, augmentation and mixing (see the module docstring).
        augment: ``False`` (default), ``"standard"`` / ``True`` (random crop with 4-pixel zero
            padding + horizontal flip), ``"randaugment"`` (that + RandAugment(2, 9)), or a
            callable ``f(x_uint8_nhwc, rng) -> x_uint8_nhwc``.
        mean, std: per-channel normalisation on the [0, 1] scale (None: none).
        mixup, cutmix: Beta alphas; 0 disables. With both, each batch uses one of the two
            (each with probability 1/2). When either is on, ``y`` is soft targets
            ``(B, num_classes)`` in ``dtype``; otherwise int64 labels.
        num_classes: width of the soft targets.
        prefetch: build the next batch in a background thread while the current one is used
            (the host's work: CPU batches, and the augmentation of GPU batches with RandAugment
            or a custom callable; a GPU-made batch is a few asynchronous launches).
        dtype: float dtype of the images (and soft targets).
        device: ``"cpu"``, or ``"cuda"``: the images live on the GPU and crop, flip, normalise
            and mixing run there (with RandAugment or a custom callable the augmentation runs
            on the CPU and the uint8 batch is copied up asynchronously through pinned memory;
            normalising and mixing still run on the GPU).

    Yields:
        ``x``: ``(B, C, H, W)`` C-contiguous ``dtype``; ``y``: int64 ``(B,)`` or soft targets.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int = 128,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        augment: bool | str | Transform | None = False,
        mean: Sequence[float] | None = CIFAR10_MEAN,
        std: Sequence[float] | None = CIFAR10_STD,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        num_classes: int = 10,
        prefetch: bool = True,
        dtype: np.dtype | type = np.float32,
        device: str = "cpu",
    ) -> None:
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != np.uint8 or x.ndim != 4:
            raise TypeError(f"x must be uint8 (N, H, W, C), got {x.dtype} {x.shape}")
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"y must be integer labels of shape ({len(x)},), got {y.dtype} "
                            f"{y.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if mixup < 0 or cutmix < 0:
            raise ValueError("mixup and cutmix are Beta alphas: use 0 to disable, > 0 to enable")
        self.x, self.y = x, y.astype(np.int64, copy=False)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed = seed
        self.augment = make_augment(augment)
        self.mean, self.std = mean, std
        self.mixup, self.cutmix = float(mixup), float(cutmix)
        self.num_classes, self.prefetch, self.dtype = num_classes, prefetch, np.dtype(dtype)
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self.device, self.gpu, self.uploader = device, None, None
        plan = _gpu_plan(self.augment, x.shape)
        if device == "cuda" and plan is not None:
            from .gpu import GPUBatcher  # noqa: PLC0415

            self._crop, self._flip = plan
            scale, shift = normalise_coefficients(x.shape[-1], mean, std, self.dtype)
            padding = 0 if self._crop is None else self._crop.padding
            self.gpu = GPUBatcher(x, scale, shift, self.dtype, padding)
        elif device == "cuda":   # augmented on the host, uploaded through pinned memory
            from .gpu import PinnedUploader  # noqa: PLC0415

            scale, shift = normalise_coefficients(x.shape[-1], mean, std, self.dtype)
            self.uploader = PinnedUploader(x.shape[1:], batch_size, scale, shift, self.dtype)
        self.epoch = 0
        self._position = 0  # batches handed out in the current epoch
        self._resume = 0  # where the next iteration starts (set by load_state_dict)

    def __len__(self) -> int:
        n, b = len(self.x), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __repr__(self) -> str:
        return (f"CIFARLoader(n={len(self.x)}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, augment={self.augment!r}, epoch={self.epoch})")

    # -- state -----------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration produce epoch ``epoch`` from its first batch."""
        self.epoch, self._position, self._resume = int(epoch), 0, 0

    def state_dict(self) -> dict[str, int]:
        """``{'seed', 'epoch', 'batch'}``: ``batch`` batches of ``epoch`` were handed out."""
        return {"seed": self.seed, "epoch": self.epoch, "batch": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next iteration continues epoch ``state['epoch']`` at batch
        ``state['batch']`` with exactly the batches an uninterrupted run would have made."""
        self.seed = int(state["seed"])
        self.epoch, self._position = int(state["epoch"]), int(state["batch"])
        if self._position >= len(self):
            self.epoch, self._position = self.epoch + 1, 0
        self._resume = self._position

    # -- batches ---------------------------------------------------------------------------
    def order(self, epoch: int) -> np.ndarray:
        """The sample order of ``epoch``."""
        if not self.shuffle:
            return np.arange(len(self.x))
        return np.random.default_rng([self.seed, epoch, 0]).permutation(len(self.x))

    def make_batch(self, epoch: int, index: int, order: np.ndarray | None = None) -> Batch:
        """Batch ``index`` of ``epoch``, computed directly (no iteration state involved)."""
        order = self.order(epoch) if order is None else order
        idx, rng = self.batch_indices(index, order), self.batch_rng(epoch, index)
        if self.gpu is not None:
            return self._gpu_batch(idx, rng)
        if self.uploader is not None:
            return self.uploader.batch(**self._host_augmented(idx, rng))
        x = self.x[idx]
        if self.augment is not None:
            x = self.augment(x, rng)
        xf = to_float_nchw(x, self.mean, self.std, self.dtype)
        y: np.ndarray = self.y[idx]
        if self.mixup > 0 or self.cutmix > 0:
            targets = one_hot(y, self.num_classes, self.dtype)
            use_cutmix = self.cutmix > 0 and (self.mixup == 0 or rng.random() < 0.5)
            if use_cutmix:
                xf, y = cutmix(xf, targets, self.cutmix, rng)
            else:
                xf, y = mixup(xf, targets, self.mixup, rng)
        return xf, y

    def _gpu_batch(self, idx: np.ndarray, rng: np.random.Generator) -> Batch:
        """``make_batch`` on the GPU: the CPU path's draws, in its order, from ``rng``."""
        b, (h, w, _) = len(idx), self.x.shape[1:]
        oy = ox = np.full(b, 0 if self._crop is None else self._crop.padding)
        if self._crop is not None:
            oy, ox = self._crop.draw(b, h, w, rng)
        flip = np.zeros(b, bool) if self._flip is None else self._flip.draw(b, rng)
        args = dict(idx=idx, oy=oy, ox=ox, flip=flip, labels=self.y[idx])
        return self.gpu.batch(**args, **self._mixing_draws(b, rng))

    def _host_augmented(self, idx: np.ndarray, rng: np.random.Generator) -> dict:
        """The uint8 batch augmented on the host and the mixing draws, in the CPU path's
        order from ``rng``: ``PinnedUploader.batch``'s arguments."""
        x = np.ascontiguousarray(self.augment(self.x[idx], rng))
        return dict(x=x, labels=self.y[idx], **self._mixing_draws(len(idx), rng))

    def _mixing_draws(self, b: int, rng: np.random.Generator) -> dict:
        """Mixup's or CutMix's draws (the partner, the weights, the box), as the CPU path's."""
        if not (self.mixup > 0 or self.cutmix > 0):
            return {}
        h, w = self.x.shape[1:3]
        if self.cutmix > 0 and (self.mixup == 0 or rng.random() < 0.5):
            perm, box = cutmix_draw(b, h, w, self.cutmix, rng)
            lam = 1 - (box[1] - box[0]) * (box[3] - box[2]) / (h * w)
            args = dict(partner=perm, weights=(1.0, 0.0), box=box)
        else:
            lam = float(rng.beta(self.mixup, self.mixup))
            perm = rng.permutation(b)
            args = dict(partner=perm, weights=(lam, 1 - lam))
        return dict(args, target_weights=(lam, 1 - lam), num_classes=self.num_classes)

    def batch_indices(self, index: int, order: np.ndarray) -> np.ndarray:
        """The images of batch ``index``, given the epoch's order."""
        return order[index * self.batch_size:(index + 1) * self.batch_size]

    def batch_rng(self, epoch: int, index: int) -> np.random.Generator:
        """The generator of batch ``index``'s augmentation and mixing."""
        return np.random.default_rng([self.seed, epoch, 1, index])

    def _batches(self, epoch: int, start: int) -> Iterator[Batch]:
        order = self.order(epoch)
        for index in range(start, len(self)):
            if self.uploader is None:
                yield self.make_batch(epoch, index, order)
            else:   # the host's part (augmenting), in the prefetch thread where there is one
                idx = self.batch_indices(index, order)
                yield self._host_augmented(idx, self.batch_rng(epoch, index))

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self.epoch, self._resume
        self._resume, self._position = 0, start
        source = self._batches(epoch, start)
        prefetcher = _Prefetcher(source) if self.prefetch and self.gpu is None else None
        batches = iter(prefetcher) if prefetcher is not None else source
        try:
            for batch in batches:
                if self.uploader is not None:   # the GPU's part, queued from this thread
                    batch = self.uploader.batch(**batch)
                self._position += 1
                yield batch
            self.epoch, self._position = epoch + 1, 0
        finally:
            if prefetcher is not None:
                prefetcher.close()

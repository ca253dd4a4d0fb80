"""The CIFAR batch built on the GPU: the uint8 images live there, a batch is one small upload
and one or two kernels.

``GPUBatcher`` holds the dataset on the device (uploaded once). Per batch the host computes what
is cheap and random (which images, the crop offsets, the flips, the mixup/cutmix partner and
weights: the same NumPy draws as the CPU loader, from the same generator) and packs the integers
into one ``(6, B)`` int64 array, the only host-to-device copy of the batch. Then

- one kernel writes the float NCHW batch: each output pixel reads its image's pixel at the
  crop offset (zero outside the 4-pixel padding), mirrored if the image is flipped, normalised
  (``x * scale + shift``, as ``to_float_nchw``), and, with mixup or cutmix, mixed with its
  partner's pixel (``wa * own + wb * partner``; cutmix takes the partner inside the box);
- with mixup/cutmix, a second kernel writes the soft targets; without, the labels are a view
  of the uploaded array (no launch).

Batches augmented on the host (RandAugment, a custom ``augment``) take ``PinnedUploader``:
the uint8 batch and its integers go up in one asynchronous copy from a pinned buffer on a
stream of its own, ordered before the batch kernel by an event, so the copy overlaps the
previous step and nothing waits on the host.
"""
from __future__ import annotations

import numpy as np

from ..autograd import backend

_KERNELS: dict = {}

_IMAGE_BODY = """
int w = i % W;
int h = (i / W) % H;
int c = (i / (W * H)) % C;
int b = i / (W * H * C);
bool inbox = h >= y0 && h < y1 && w >= x0 && w < x1;
T wa = inbox ? wa_in : wa_out;
T wb = inbox ? wb_in : wb_out;
int sa = P[b];
int ya = h + P[n + b] - pad;
int xa = (P[3 * n + b] != 0 ? W - 1 - w : w) + P[2 * n + b] - pad;
bool ina = ya >= 0 && ya < H && xa >= 0 && xa < W;
T va = ina ? (T)X[((sa * H + max(0, min(H - 1, ya))) * W + max(0, min(W - 1, xa))) * C + c] : (T)0;
int pb = P[4 * n + b];
int sb = P[pb];
int yb = h + P[n + pb] - pad;
int xb = (P[3 * n + pb] != 0 ? W - 1 - w : w) + P[2 * n + pb] - pad;
bool inb = yb >= 0 && yb < H && xb >= 0 && xb < W;
T vb = inb ? (T)X[((sb * H + max(0, min(H - 1, yb))) * W + max(0, min(W - 1, xb))) * C + c] : (T)0;
T na = va * scale[c];
na = na + shift[c];
T nb = vb * scale[c];
nb = nb + shift[c];
T ma = wa * na;
T mb = wb * nb;
out = ma + mb;
"""

_TARGET_BODY = """
int b = i / K;
int k = i % K;
int pb = P[4 * n + b];
T own = P[5 * n + b] == k ? (T)1 : (T)0;
T other = P[5 * n + pb] == k ? (T)1 : (T)0;
T ma = ta * own;
T mb = tb * other;
t = ma + mb;
"""


# (in_params, out_params, body, name) of each ElementwiseKernel (``tools/nvrtc_check.py``
# compiles them too)
SPECS = {
    "image": ("raw uint8 X, raw int64 P, raw T scale, raw T shift, int32 n, int32 H, int32 W, "
              "int32 C, int32 pad, T wa_out, T wb_out, T wa_in, T wb_in, int32 y0, int32 y1, "
              "int32 x0, int32 x1", "T out", _IMAGE_BODY, "minivit_data_batch"),
    "targets": ("raw int64 P, int32 n, int32 K, T ta, T tb", "T t", _TARGET_BODY,
                "minivit_data_targets"),
}


def _kernels():
    if not _KERNELS:
        cp = backend._import_cupy()
        for key, spec in SPECS.items():
            _KERNELS[key] = cp.ElementwiseKernel(*spec)
    return _KERNELS


def plan(b: int, idx, oy, ox, flip, labels, partner=None, out=None) -> np.ndarray:
    """The ``(6, B)`` int64 integers a batch kernel reads: image index, crop offsets, flip,
    mixing partner, label (written into ``out`` when given)."""
    p = np.empty((6, b), np.int64) if out is None else out
    p[0], p[1], p[2], p[3], p[5] = idx, oy, ox, flip, labels
    p[4] = np.arange(b) if partner is None else partner
    return p


class _BatchKernels:
    """The batch kernels over uint8 NHWC images on the GPU; ``scale``/``shift``: per-channel
    normalisation ``x * scale + shift`` (``dtype``)."""

    def __init__(self, shape, scale: np.ndarray, shift: np.ndarray, dtype: np.dtype) -> None:
        cp = backend._import_cupy()
        self.scale = cp.asarray(np.asarray(scale, dtype).reshape(-1))
        self.shift = cp.asarray(np.asarray(shift, dtype).reshape(-1))
        self.dtype, self.shape = np.dtype(dtype), tuple(shape)

    def make(self, images, p_dev, padding: int, weights=(1.0, 0.0), box=(0, 0, 0, 0),
             target_weights=None, num_classes: int = 10):
        """(x, y) of the batch that ``p_dev`` (``plan``'s rows, on the GPU) describes."""
        cp = backend._import_cupy()
        k = _kernels()
        b = p_dev.shape[1]
        h, w, c = self.shape
        t = self.dtype.type
        out = cp.empty((b, c, h, w), self.dtype)
        k["image"](images, p_dev, self.scale, self.shift, np.int32(b), np.int32(h),
                   np.int32(w), np.int32(c), np.int32(padding), t(weights[0]),
                   t(weights[1]), t(0), t(1), *(np.int32(v) for v in box), out)
        if target_weights is None:
            return out, p_dev[5]
        targets = cp.empty((b, num_classes), self.dtype)
        k["targets"](p_dev, np.int32(b), np.int32(num_classes), t(target_weights[0]),
                     t(target_weights[1]), targets)
        return out, targets


class GPUBatcher(_BatchKernels):
    """The images ``x`` (uint8 NHWC) on the GPU, and the batch kernels over them."""

    def __init__(self, x: np.ndarray, scale: np.ndarray, shift: np.ndarray, dtype: np.dtype,
                 padding: int) -> None:
        cp = backend._import_cupy()
        self.x = cp.asarray(np.ascontiguousarray(x))        # the one upload of the images
        super().__init__(x.shape[1:], scale, shift, dtype)
        self.padding = int(padding)

    def batch(self, idx, oy, ox, flip, labels, partner=None, weights=(1.0, 0.0),
              box=(0, 0, 0, 0), target_weights=None, num_classes: int = 10):
        """The batch of images ``idx``: crop at ``(oy, ox)`` of the padded image, mirrored
        where ``flip``; mixed as ``weights[0] * own + weights[1] * partner`` (outside
        ``box = (y0, y1, x0, x1)``; inside it the partner alone). ``target_weights``: soft
        targets ``(B, num_classes)`` mixed with these weights, or None for int64 labels."""
        cp = backend._import_cupy()
        p_dev = cp.asarray(plan(len(idx), idx, oy, ox, flip, labels, partner))  # the one upload
        return self.make(self.x, p_dev, self.padding, weights, box, target_weights, num_classes)


class PinnedUploader(_BatchKernels):
    """Batches augmented on the host (RandAugment, a custom ``augment``) to the GPU, overlapped
    with the GPU's work and with no host synchronisation.

    Each batch's uint8 images and its ``plan`` integers are written into one page-locked
    (pinned) host buffer and copied to the GPU in one asynchronous copy on a stream of their
    own, while the GPU still runs the previous step. The compute stream waits for that copy on
    the GPU (an event recorded after it), then the batch kernel normalises and mixes the
    images as for resident data (no crop offsets, no flips: the host did those). ``SLOTS``
    buffers take turns: a device buffer is overwritten only after the kernel that read it (the
    copy stream waits for an event recorded after that kernel), a pinned buffer only after its
    previous copy has finished (``Event.done``, asked without waiting; the host waits only if
    the GPU is ``SLOTS`` batches behind)."""

    SLOTS = 3

    def __init__(self, image_shape, max_batch: int, scale, shift, dtype) -> None:
        super().__init__(image_shape, scale, shift, dtype)
        cp = backend._import_cupy()
        import cupyx  # noqa: PLC0415

        self.stream = cp.cuda.Stream(non_blocking=True)
        nbytes = 6 * 8 * max_batch + max_batch * int(np.prod(image_shape))
        self.max_batch = max_batch
        self.host = [cupyx.empty_pinned(nbytes, np.uint8) for _ in range(self.SLOTS)]
        self.dev = [cp.empty(nbytes, np.uint8) for _ in range(self.SLOTS)]
        self.copied = [None] * self.SLOTS   # event after each slot's last copy
        self.read = [None] * self.SLOTS     # event after the last kernel that read its buffer
        self.next = 0

    def batch(self, x, labels, partner=None, weights=(1.0, 0.0), box=(0, 0, 0, 0),
              target_weights=None, num_classes: int = 10):
        """``GPUBatcher.batch`` for the augmented uint8 images ``x`` (B, H, W, C) themselves."""
        cp = backend._import_cupy()
        b = len(x)
        if b > self.max_batch or tuple(x.shape[1:]) != self.shape or x.dtype != np.uint8:
            raise ValueError(f"expected at most {self.max_batch} uint8 images of shape "
                             f"{self.shape}, got {x.dtype} {tuple(x.shape)}")
        k, self.next = self.next, (self.next + 1) % self.SLOTS
        if self.copied[k] is not None and not self.copied[k].done:
            self.copied[k].synchronize()   # the GPU is SLOTS batches behind: let it catch up
        n_plan, n = 6 * 8 * b, 6 * 8 * b + x.size
        host = self.host[k]
        plan(b, np.arange(b), 0, 0, 0, labels, partner,
             out=host[:n_plan].view(np.int64).reshape(6, b))
        host[n_plan:n].reshape(x.shape)[...] = x
        if self.read[k] is not None:
            self.stream.wait_event(self.read[k])   # the kernel that read this buffer is done
        self.dev[k][:n].set(host[:n], stream=self.stream)
        self.copied[k] = self.stream.record()
        compute = cp.cuda.get_current_stream()
        compute.wait_event(self.copied[k])         # on the GPU: the batch's kernels follow it
        p_dev = self.dev[k][:n_plan].view(np.int64).reshape(6, b)
        images = self.dev[k][n_plan:n].reshape(x.shape)
        x_dev, y_dev = self.make(images, p_dev, 0, weights, box, target_weights, num_classes)
        if target_weights is None:
            y_dev = y_dev.copy()   # the labels, out of the buffer the next batches reuse
        self.read[k] = compute.record()
        return x_dev, y_dev

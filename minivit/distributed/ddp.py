"""Synchronous data parallelism: every rank holds the whole model, computes the gradient of
its shard of the batch, and the gradients are averaged before the optimizer step.

    ddp = DistributedDataParallel(model)      # broadcasts rank 0's weights and buffers
    loss = F.cross_entropy(ddp(x_shard), y_shard)
    loss.backward()                           # buckets are summed while backward still runs
    ddp.finish_gradients()                    # wait for the sums: p.grad is the average
    opt.step()

The parameters are packed in reverse order (backward produces the last layers' gradients
first) into buckets of about ``bucket_mb`` MB (Horovod's tensor fusion, PyTorch DDP's
buckets). A ``post_accumulate_grad`` hook on every parameter counts the gradients that
arrive; when all of a bucket's parameters have theirs, the bucket is copied into its flat
buffer and a non-blocking allreduce starts, so the sums of the last layers run while the first
layers' gradients are still being computed. Buckets start strictly in order, so every rank
issues the same collectives in the same order (MPI requires it). How many gradients each
parameter receives per backward is learned on the first step (every bucket is then summed at
``finish_gradients``); a parameter that never gets one is summed as zeros and keeps
``grad = None``.
"""
from __future__ import annotations

import time

from .transport import MPITransport
from .world import DistributedError, World, get_world


class _Bucket:
    def __init__(self, params):
        self.params = params            # in reverse model order
        self.offsets, n = [], 0
        for p in params:
            self.offsets.append(n)
            n += p.data.size
        self.size, self.dtype = n, params[0].dtype
        self.buffer = None
        self.waiting = 0                # gradients still to arrive this step
        self.handle = None


class DistributedDataParallel:
    """Wrap ``module`` for synchronous data parallelism over ``world`` (see the module doc).

    ``transport``: how buffers are summed (``transport.MPITransport`` by default, NCCL for GPUs);
    ``bucket_mb``: the bucket size; ``broadcast``: copy rank 0's parameters and buffers first.
    Timings of the last step: ``last_wait_s`` (time blocked in ``finish_gradients``)."""

    def __init__(self, module, world: World | None = None, transport=None,
                 bucket_mb: float = 4.0, broadcast: bool = True):
        if not bucket_mb > 0:
            raise ValueError(f"bucket_mb must be > 0, got {bucket_mb!r}")
        self.module = module
        self.world = world if world is not None else get_world()
        self.transport = transport if transport is not None else MPITransport(self.world)
        if broadcast:
            broadcast_module(module, self.world)
        params = [p for p in module.parameters() if p.requires_grad]
        self.buckets: list[_Bucket] = []
        limit = bucket_mb * 2 ** 20
        current, nbytes = [], 0
        for p in reversed(params):
            if current and (nbytes + p.data.nbytes > limit or p.dtype != current[0].dtype):
                self.buckets.append(_Bucket(current))
                current, nbytes = [], 0
            current.append(p)
            nbytes += p.data.nbytes
        if current:
            self.buckets.append(_Bucket(current))
        self._where = {}
        for k, b in enumerate(self.buckets):
            b.buffer = self.transport.alloc(b.size, b.dtype)
            for p in b.params:
                self._where[id(p)] = k
        self._expected: dict | None = None     # gradients per parameter per backward
        self._counts = {id(p): 0 for p in params}
        self._next = 0                          # the next bucket to start
        self._handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in params]
        self.last_wait_s = 0.0
        self.gradient_bytes = sum(b.size * b.buffer.dtype.itemsize for b in self.buckets)

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def __getattr__(self, name):   # train(), eval(), parameters(), state_dict()... of the model
        if name == "module":
            raise AttributeError(name)
        return getattr(self.module, name)

    # -- during backward --------------------------------------------------------------------
    def _on_grad(self, p) -> None:
        key = id(p)
        self._counts[key] += 1
        if self._expected is None:      # the first step: learning how many gradients come
            return
        k = self._where[key]
        bucket = self.buckets[k]
        if self._counts[key] > self._expected[key]:
            if k < self._next:
                raise DistributedError(
                    f"a parameter of shape {p.shape} got a gradient after its bucket was summed "
                    f"(it was used more times in this backward than in the first one); the "
                    f"graph must have the same shape on every step and rank")
            return
        if self._counts[key] == self._expected[key]:
            bucket.waiting -= 1
            if bucket.waiting == 0:
                self._start_ready()   # this bucket and the ready ones after it, in order
        if self._next:   # give the started sums a chance to progress (MPI progresses in calls)
            self.transport.poll([b.handle for b in self.buckets[:self._next]])

    def _start_ready(self) -> None:
        while self._next < len(self.buckets) and self.buckets[self._next].waiting <= 0:
            self._start(self.buckets[self._next])
            self._next += 1

    def _start(self, bucket: _Bucket) -> None:
        buf = bucket.buffer
        for p, off in zip(bucket.params, bucket.offsets):
            if p.grad is None:
                buf[off:off + p.data.size] = 0
            else:
                buf[off:off + p.data.size] = p.grad.data.reshape(-1)
        bucket.handle = self.transport.start(buf)

    # -- after backward ---------------------------------------------------------------------
    def finish_gradients(self) -> None:
        """Start what is left, wait for every bucket, and put the averaged gradients in
        ``p.grad`` (call it after ``backward``, before clipping and ``optimizer.step``)."""
        t0 = time.perf_counter()
        while self._next < len(self.buckets):
            self._start(self.buckets[self._next])
            self._next += 1
        scale = 1.0 / self.world.size
        for bucket in self.buckets:
            self.transport.finish(bucket.handle)
            bucket.handle = None
            buf = bucket.buffer
            buf *= buf.dtype.type(scale)
            for p, off in zip(bucket.params, bucket.offsets):
                if p.grad is not None:
                    p.grad.data[...] = buf[off:off + p.data.size].reshape(p.shape)
        self.last_wait_s = time.perf_counter() - t0
        if self._expected is None:
            self._expected = dict(self._counts)
        self._reset()

    def _reset(self) -> None:
        for key in self._counts:
            self._counts[key] = 0
        for bucket in self.buckets:
            bucket.waiting = sum(self._expected[id(p)] > 0 for p in bucket.params)
        self._next = 0

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def broadcast_module(module, world: World, parameters: bool = True) -> None:
    """Copy rank 0's parameters (unless ``parameters=False``) and buffers to every rank,
    each array in place."""
    if not world.distributed:
        return
    named = list(module.named_parameters()) if parameters else []
    for name, t in named + list(module.named_buffers()):
        if t is None:
            continue
        _broadcast_array(t.data, world, f"the broadcast of {name}")


def _broadcast_array(a, world: World, what: str) -> None:
    import numpy as np  # noqa: PLC0415

    if isinstance(a, np.ndarray):
        if not a.flags.c_contiguous:
            raise DistributedError(f"{what}: the array is not contiguous")
        world.broadcast_(a.reshape(-1) if a.ndim else a.reshape(1), what)
    else:   # a GPU array: through the host
        host = a.get()
        world.broadcast_(host.reshape(-1) if host.ndim else host.reshape(1), what)
        a.set(host)

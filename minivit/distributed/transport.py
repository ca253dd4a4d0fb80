"""How a flat buffer of gradients is summed over the ranks: MPI on host arrays, or NCCL on GPUs.

Both have the same four calls, so the bucketing in ``ddp.py`` does not care which runs:
``alloc(n, dtype)`` a flat buffer where this transport wants it, ``start(buf)`` begin summing it
in place (non-blocking), ``poll(handles)`` let started sums progress, ``finish(handle)`` wait
for one (against the world's deadline). ``sum_(array)`` is the blocking form (SyncBatchNorm).

NCCL is what PyTorch's DDP and ChainerMN's ``PureNcclCommunicator`` use between GPUs: rank 0
makes a unique id, MPI broadcasts it, and every rank joins ``NcclCommunicator(size, id, rank)``;
the sums then run on a CUDA stream of their own, after an event recorded on the compute stream
(the gradients must be there first). Without NCCL, GPU buckets go to the host and over MPI.
"""
from __future__ import annotations

import time

import numpy as np

from .world import DistributedError, World, timeout_s


class MPITransport:
    """``MPI_Iallreduce`` on host buffers; GPU buffers are copied to the host and back."""

    name = "MPI"

    def __init__(self, world: World, xp=np):
        self.world, self.xp = world, xp

    def alloc(self, n: int, dtype):
        return self.xp.zeros(n, dtype)

    def start(self, buf):
        host = buf if isinstance(buf, np.ndarray) else buf.get()   # a GPU buffer: to the host
        world = self.world
        request = world.comm.Iallreduce(world.MPI.IN_PLACE, host, op=world.MPI.SUM)
        return request, buf, host

    def poll(self, handles) -> None:
        if handles:   # MPICH progresses non-blocking collectives inside MPI calls: make one
            self.world.MPI.Request.Testall([h[0] for h in handles])

    def finish(self, handle) -> None:
        request, buf, host = handle
        self.world.wait(request, "the gradient allreduce")
        if host is not buf:
            buf.set(host)

    def sum_(self, array):
        self.finish(self.start(array))
        return array


class NCCLTransport:
    """``ncclAllReduce`` on GPU buffers, on a stream of its own.

    ``cupy``: the CuPy module (``cupy.cuda`` gives ``Stream``, ``Event`` and ``nccl``), passed
    in so the class runs against a stand-in where there is no GPU."""

    name = "NCCL"

    def __init__(self, world: World, cupy, nccl=None):
        self.world, self.cupy = world, cupy
        self.nccl = nccl if nccl is not None else cupy.cuda.nccl
        uid = self.nccl.get_unique_id() if world.is_main else None
        uid = world.broadcast_object(uid, "the NCCL id broadcast")   # the bootstrap, over MPI
        self.comm = self.nccl.NcclCommunicator(world.size, uid, world.rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self._types = {np.dtype(np.float32): self.nccl.NCCL_FLOAT32,
                       np.dtype(np.float64): self.nccl.NCCL_FLOAT64,
                       np.dtype(np.float16): self.nccl.NCCL_FLOAT16}

    def alloc(self, n: int, dtype):
        return self.cupy.zeros(n, dtype)

    def start(self, buf):
        if buf.dtype not in self._types:
            raise DistributedError(f"NCCL allreduce: unsupported dtype {buf.dtype}; expected "
                                   f"one of float16, float32, float64")
        ready = self.cupy.cuda.Event()
        ready.record()                        # on the compute stream: the bucket is filled
        self.stream.wait_event(ready)
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._types[buf.dtype],
                            self.nccl.NCCL_SUM, self.stream.ptr)
        done = self.cupy.cuda.Event()
        done.record(self.stream)
        return done

    def poll(self, handles) -> None:
        pass   # NCCL runs by itself on its stream

    def finish(self, done) -> None:
        if not done.done:   # polled, so a dead peer ends in an error rather than a hang
            limit, start, pause = timeout_s(), time.monotonic(), 1e-5
            while not done.done:
                if time.monotonic() - start > limit:
                    raise DistributedError(
                        f"rank {self.world.rank}: waited {limit:g} s for the NCCL gradient "
                        f"allreduce; a rank died or hangs (MINIVIT_DIST_TIMEOUT)")
                time.sleep(pause)
                pause = min(pause * 2, 2e-3)
        self.cupy.cuda.get_current_stream().wait_event(done)

    def sum_(self, array):
        self.finish(self.start(array))
        return array


def make_transport(world: World, device: str, log=None):
    """NCCL for ``cuda`` where CuPy has it, else MPI (on host copies for ``cuda``)."""
    if device != "cuda":
        return MPITransport(world)
    from ..autograd import backend  # noqa: PLC0415

    cupy = backend._import_cupy()
    try:
        from cupy.cuda import nccl  # noqa: PLC0415
        available = bool(getattr(nccl, "available", True))
    except ImportError:
        available = False
    if available:
        return NCCLTransport(world, cupy, nccl)
    if log is not None:
        log("NCCL is not available in this CuPy: gradients go over MPI through host memory")
    return MPITransport(world, cupy)

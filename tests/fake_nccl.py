"""A stand-in of ``cupy.cuda.nccl`` (and the bits of ``cupy`` NCCLTransport uses) for machines
without a GPU: device arrays are NumPy arrays whose ``.data.ptr`` is their address, and
``NcclCommunicator.allReduce`` sums the memory at the pointers it is given over MPI, so the
transport is checked with the raw arguments (pointers, count, type, op, stream) the real NCCL
receives. ``CALLS`` records them.
"""
from __future__ import annotations

import ctypes
import types

import numpy as np

NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64 = 6, 7, 8   # ncclDataType_t
NCCL_SUM = 0                                          # ncclRedOp_t
_TYPES = {NCCL_FLOAT16: np.float16, NCCL_FLOAT32: np.float32, NCCL_FLOAT64: np.float64}
CALLS: list = []
available = True


def get_unique_id():
    return tuple(int(v) for v in np.random.default_rng().integers(-128, 128, 128))


class NcclCommunicator:
    def __init__(self, ndev: int, commId, rank: int):
        from minivit.distributed import get_world  # noqa: PLC0415

        world = get_world()
        if world.comm is not None:   # every rank must have been given rank 0's id
            ids = world.comm.allgather(tuple(commId))
            assert all(i == ids[0] for i in ids), "ranks got different NCCL ids"
        assert ndev == world.size and rank == world.rank, (ndev, rank)
        self.world = world

    def allReduce(self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int,
                  stream: int) -> None:
        CALLS.append(("allReduce", count, datatype, op, stream))
        assert op == NCCL_SUM and isinstance(stream, int) and stream != 0
        dtype = np.dtype(_TYPES[datatype])
        send = _at(sendbuf, count, dtype)
        recv = _at(recvbuf, count, dtype)
        total = send.copy()
        if self.world.comm is not None:
            self.world.allreduce_(total)
        recv[...] = total


def _at(pointer: int, count: int, dtype) -> np.ndarray:
    raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(pointer)
    return np.frombuffer(raw, dtype=dtype, count=count)


class DeviceArray(np.ndarray):
    """A 'GPU' array: NumPy memory with CuPy's ``.data.ptr``."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)


class _Stream:
    _next = 1

    def __init__(self, non_blocking: bool = False):
        self.ptr, _Stream._next = _Stream._next, _Stream._next + 1
        self.waited: list = []

    def wait_event(self, event) -> None:
        assert event.recorded, "waiting on an event that was never recorded"
        self.waited.append(event)


class _Event:
    def __init__(self):
        self.recorded = False

    def record(self, stream=None) -> None:
        self.recorded = True

    @property
    def done(self) -> bool:
        return self.recorded


def cupy():
    """The ``cupy`` the transport sees: ``zeros`` and ``cuda.{Stream, Event, ...}``."""
    current = _Stream()
    cuda = types.SimpleNamespace(Stream=_Stream, Event=_Event, nccl=None,
                                 get_current_stream=lambda: current)
    return types.SimpleNamespace(
        zeros=lambda n, dtype: np.zeros(n, dtype).view(DeviceArray), cuda=cuda)

"""The MPI world a run belongs to: rank, size, and collectives that cannot hang forever.

Started with ``mpiexec -n N minivit train ...``, every process finds the launcher's
environment (``PMI_SIZE`` from MPICH's Hydra, ``OMPI_COMM_WORLD_SIZE`` from Open MPI), imports
mpi4py and joins ``MPI.COMM_WORLD``; started alone, it is a world of one and mpi4py is never
imported. Every wait on another rank is a non-blocking MPI call polled against a deadline
(``MINIVIT_DIST_TIMEOUT`` seconds, default 300): a rank that died or hangs makes the others
stop with an error naming the wait, and the error ends the whole job with ``MPI_Abort``
instead of leaving the other ranks blocked in a collective.
"""
from __future__ import annotations

import os
import pickle
import sys
import time
import traceback

import numpy as np

_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


class DistributedError(RuntimeError):
    """A rank cannot go on: the launch is unusable, or another rank died or stopped answering."""


def launched_size() -> int:
    """The number of ranks an MPI launcher started (1 when started alone)."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 1


def timeout_s() -> float:
    value = os.environ.get("MINIVIT_DIST_TIMEOUT", "300")
    try:
        t = float(value)
    except ValueError:
        t = -1.0
    if not t > 0:
        raise DistributedError(f"MINIVIT_DIST_TIMEOUT must be a number of seconds > 0, "
                               f"got {value!r}")
    return t


class World:
    """The ranks of one run. ``World(None)`` is a single process: every collective is the
    identity, so the training loop reads the same with one rank or many."""

    def __init__(self, comm=None):
        self.comm = comm
        if comm is None:
            self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
            return
        from mpi4py import MPI  # noqa: PLC0415

        self.MPI = MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)  # the ranks of this machine
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"

    # -- waiting ---------------------------------------------------------------------------
    def wait(self, requests, what: str, limit: float | None = None) -> None:
        """Wait for MPI requests, polling; past the deadline (``limit`` seconds, default
        ``MINIVIT_DIST_TIMEOUT``) raise ``DistributedError``."""
        if self.comm is None or not requests:
            return
        requests = list(requests) if isinstance(requests, (list, tuple)) else [requests]
        if self.MPI.Request.Testall(requests):
            return
        limit = timeout_s() if limit is None else limit
        start = time.monotonic()
        pause = 1e-5
        while not self.MPI.Request.Testall(requests):
            waited = time.monotonic() - start
            if waited > limit:
                raise DistributedError(
                    f"rank {self.rank}: waited {waited:.0f} s for the other ranks in {what}; "
                    f"a rank died or hangs (the limit is MINIVIT_DIST_TIMEOUT={limit:g} s)")
            time.sleep(pause)
            pause = min(pause * 2, 2e-3)   # short sleeps: the other core may be computing

    # -- collectives -------------------------------------------------------------------------
    def barrier(self, what: str = "a barrier") -> None:
        if self.comm is not None:
            self.wait(self.comm.Ibarrier(), what)

    def allreduce_(self, array: np.ndarray, what: str = "an allreduce") -> np.ndarray:
        """Sum a host array over the ranks, in place; returns it."""
        if self.comm is not None:
            self.wait(self.comm.Iallreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM), what)
        return array

    def broadcast_(self, array: np.ndarray, what: str = "a broadcast",
                   limit: float | None = None) -> np.ndarray:
        """Overwrite a host array with rank 0's, in place; returns it."""
        if self.comm is not None:
            self.wait(self.comm.Ibcast(array, root=0), what, limit)
        return array

    def broadcast_object(self, obj, what: str = "a broadcast", limit: float | None = None):
        """Rank 0's ``obj`` on every rank (pickled; plain data only, as for checkpoints)."""
        if self.comm is None:
            return obj
        data = pickle.dumps(obj) if self.is_main else b""
        n = self.broadcast_(np.array([len(data)], dtype=np.int64), what, limit)
        buf = np.frombuffer(data, np.uint8).copy() if self.is_main else np.empty(n[0], np.uint8)
        self.broadcast_(buf, what)
        return obj if self.is_main else pickle.loads(buf.tobytes())

    def from_main(self, fn, *args, limit: float | None = None, **kwargs):
        """Run ``fn`` on rank 0 only and hand its result (or its exception) to every rank: for
        what only rank 0 may touch, the run folder. Another rank re-raises rank 0's exception
        marked ``raised_on_main`` so it is reported once, by rank 0. ``limit``: how long the
        others wait (default ``MINIVIT_DIST_TIMEOUT``)."""
        if self.comm is None:
            return fn(*args, **kwargs)
        outcome = None
        if self.is_main:
            try:
                outcome = ("ok", fn(*args, **kwargs))
            except Exception as exc:  # handed to the others, then raised here too
                outcome = ("error", exc)
        try:
            kind, value = self.broadcast_object(outcome, "a result of rank 0", limit)
        except (pickle.PicklingError, TypeError, AttributeError):  # an unpicklable exception
            kind, value = "error", DistributedError(str(outcome[1]))
        if kind == "error":
            if not self.is_main:
                value.raised_on_main = True
            raise value
        return value

    def sum_over_ranks(self, *values):
        """Numbers (or arrays) summed over the ranks, in one float64 allreduce."""
        if self.comm is None:
            return values
        flat = [np.asarray(v, dtype=np.float64).ravel() for v in values]
        total = self.allreduce_(np.concatenate(flat), "a sum of metrics")
        out, i = [], 0
        for v, f in zip(values, flat):
            part = total[i:i + f.size]
            i += f.size
            out.append(part.reshape(np.shape(v)) if np.ndim(v) else float(part[0]))
        return tuple(out)

    def abort(self, code: int = 1) -> None:
        """End every rank of the job (``MPI_Abort``); without MPI, nothing.

        What this rank printed last (its error) is in a pipe to the launcher, which forwards it;
        ``MPI_Abort`` at once can end the launcher before it has read the pipe, and the message
        is lost (MPICH: about 1 abort in 10 on a busy machine). So the abort waits
        ``ABORT_GRACE_S`` after the flush: 10 ms was already enough under load."""
        if self.comm is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            time.sleep(ABORT_GRACE_S)
            self.comm.Abort(code)


ABORT_GRACE_S = 0.25   # the launcher's time to forward the last output before MPI_Abort;
                       # under report_error's 1 s, so another rank has not printed yet

_world: World | None = None


def get_world() -> World:
    """The world of this process, joined on first use (mpi4py is imported only under a
    launcher that started more than one rank)."""
    global _world
    if _world is None:
        n = launched_size()
        if n <= 1:
            _world = World(None)
        else:
            try:
                from mpi4py import MPI  # noqa: PLC0415
            except ImportError:
                raise DistributedError(
                    f"started by an MPI launcher as one of {n} ranks, but mpi4py is not "
                    f"installed; install it with: pip install -e \".[mpi]\" in your "
                    f"minivit clone") from None
            _world = World(MPI.COMM_WORLD)
            if _world.size > 1:
                _install_excepthook(_world)
    return _world


def _install_excepthook(world: World) -> None:
    """An uncaught exception on any rank ends the whole job: print it, then ``MPI_Abort``."""
    def hook(kind, value, tb):
        sys.stderr.write(f"[rank {world.rank}] " + "".join(
            traceback.format_exception(kind, value, tb)))
        world.abort(1)

    sys.excepthook = hook


def abort_after_error(code: int) -> None:
    """After an error was reported: in a job of several ranks, end all of them."""
    if _world is not None and _world.distributed:
        _world.abort(code)


def report_error(exc: BaseException) -> bool:
    """Whether this rank should print ``exc``: an error of rank 0 is printed by rank 0 alone.
    Another rank waits a second first: when every rank meets the same error (a NaN loss),
    rank 0's report ends the job before a second copy is printed."""
    if getattr(exc, "raised_on_main", False):
        return False
    if _world is not None and _world.distributed and not _world.is_main:
        time.sleep(1.0)
    return True


def rank_prefix() -> str:
    """``"rank 1: "`` on a rank other than 0 of a job of several, else ``""``."""
    return f"rank {_world.rank}: " if _world is not None and _world.rank else ""

"""Data-parallel training over MPI (mpi4py) and NCCL (CuPy): ``mpiexec -n N minivit train ...``.

The pieces, one idea per file:

- ``world.py``: the MPI world (rank, size, local rank), collectives polled against a deadline,
  an error on any rank ending the whole job;
- ``transport.py``: summing a flat buffer over the ranks, MPI on host memory or NCCL on GPUs;
- ``ddp.py``: ``DistributedDataParallel``, gradients averaged in buckets started from
  ``Tensor.register_post_accumulate_grad_hook`` while backward runs;
- ``data.py``: ``ShardedLoader``, each rank's part of every global batch;
- ``run.py``: ``DataParallel``, what ``train.fit`` does differently over several ranks.

Only ``world.get_world()`` imports mpi4py, and only under an MPI launcher with more than one
rank: ``import minivit.distributed`` costs nothing in a plain run. See docs/distributed.md.
"""
from .data import ShardedLoader
from .ddp import DistributedDataParallel, broadcast_module
from .run import DataParallel, sync_batchnorm
from .transport import MPITransport, NCCLTransport, make_transport
from .world import DistributedError, World, abort_after_error, get_world, report_error

__all__ = ["DataParallel", "DistributedDataParallel", "DistributedError", "MPITransport",
           "NCCLTransport", "ShardedLoader", "World", "abort_after_error", "broadcast_module",
           "get_world", "make_transport", "report_error", "sync_batchnorm"]

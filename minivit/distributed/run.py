"""What ``train.fit`` does differently over several ranks, in one place.

``DataParallel.setup(cfg)`` is the identity for a world of one (a plain run is untouched);
over N ranks it: prints ``data-parallel over N ranks (MPI)`` once, lets rank 0 alone log,
draw the progress bar and touch the run folder, gives each rank its GPU (local rank), shards
the loaders, broadcasts rank 0's weights, reduces the gradients in buckets (MPI, or NCCL on
GPUs), optionally synchronises BatchNorm statistics, reseeds each rank's dropout stream per
epoch from (seed, epoch, rank), and sums the metrics of all ranks.
"""
from __future__ import annotations

import os

import numpy as np

from .data import ShardedLoader
from .ddp import DistributedDataParallel, broadcast_module
from .transport import make_transport
from .world import DistributedError, World, get_world


def sync_batchnorm(model, sum_across) -> int:
    """Make every BatchNorm of ``model`` take its training statistics over all ranks
    (``sum_across`` sums a float64 array over the ranks in place); returns how many."""
    from ..nn.layers import _BatchNorm  # noqa: PLC0415

    n = 0
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.sum_across = sum_across
            n += 1
    return n


class DataParallel:
    """The data-parallel side of one ``fit`` run (see the module docstring)."""

    def __init__(self, world: World, log=print):
        self.world, self._log = world, log
        self.ddp: DistributedDataParallel | None = None
        self.transport = None

    @classmethod
    def setup(cls, log=print) -> "DataParallel":
        dp = cls(get_world(), log)
        if dp.active:
            dp.log(f"data-parallel over {dp.world.size} ranks (MPI)")
            if dp.world.local_size > 1 and "MINIVIT_NUM_THREADS" not in os.environ:
                from ..kernels import parallel  # noqa: PLC0415  (the CLI sets the variable)

                parallel.NUM_THREADS = max(1, parallel.NUM_THREADS // dp.world.local_size)
        return dp

    @property
    def active(self) -> bool:
        return self.world.distributed

    @property
    def is_main(self) -> bool:
        return self.world.is_main

    def log(self, message: str) -> None:
        if self.world.is_main:
            self._log(message)

    def select_device(self, device: str) -> None:
        """``cuda``: this rank takes the GPU of its local rank (ranks of a machine share them
        round-robin when there are more ranks than GPUs)."""
        if device != "cuda" or not self.active:
            return
        from ..autograd import backend  # noqa: PLC0415

        cupy = backend._import_cupy()
        cupy.cuda.Device(self.world.local_rank % cupy.cuda.runtime.getDeviceCount()).use()

    def shard(self, train_loader, test_loader):
        if not self.active:
            return train_loader, test_loader
        if train_loader.batch_size < self.world.size:
            raise DistributedError(f"--batch-size {train_loader.batch_size} is the global batch "
                                   f"and must be at least the number of ranks "
                                   f"({self.world.size})")
        if len(train_loader.x) < self.world.size:
            raise DistributedError(f"{len(train_loader.x)} training images cannot be shared by "
                                   f"{self.world.size} ranks (one image each at least)")
        return (ShardedLoader(train_loader, self.world.rank, self.world.size),
                ShardedLoader(test_loader, self.world.rank, self.world.size))

    def wrap(self, model, device: str, sync_bn: bool = False, bucket_mb: float = 4.0):
        """Broadcast rank 0's weights and buffers, hook the bucketed gradient reduction."""
        if not self.active:
            return model
        self.transport = make_transport(self.world, device, self.log)
        if self.transport.name == "NCCL":
            self.log("gradients reduced with NCCL")
        if sync_bn:
            n = sync_batchnorm(model, self.transport.sum_)
            self.log(f"--sync-bn: {n} BatchNorm layers take their statistics over all ranks")
        self.ddp = DistributedDataParallel(model, self.world, self.transport, bucket_mb)
        return model

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Each rank's own dropout / drop-path stream for this epoch, from (seed, epoch, rank):
        a resumed run draws exactly what the uninterrupted one drew."""
        if self.active:
            from .. import manual_seed  # noqa: PLC0415

            state = np.random.SeedSequence([seed, epoch, self.world.rank]).generate_state(2)
            manual_seed(int(state[0]) << 32 | int(state[1]))

    def backward(self, loss, loader) -> None:
        """``loss.backward()``, then the gradients averaged over the ranks. A rank whose part of
        the batch is not 1/N of it (the last batch) weights its loss so the average is the
        gradient of the whole batch's mean loss."""
        if not self.active:
            loss.backward()
            return
        n = loader.global_size(loader.current_index())
        size, rank = self.world.size, self.world.rank
        n_local = n // size + (rank < n % size)            # this rank's part (array_split)
        if n_local * size != n:   # the average of the ranks' gradients of c_r L_r, c_r =
            loss = loss * (n_local * size / n)             # N n_r / n, is that of the mean
        loss.backward()
        self.ddp.finish_gradients()

    def images_in_step(self, loader, n_local: int) -> int:
        """Images of the step on all ranks (for the progress bar)."""
        return loader.global_size(loader.current_index()) if self.active else n_local

    def sum(self, *values):
        """Numbers or arrays summed over the ranks."""
        return self.world.sum_over_ranks(*values)

    def before_eval(self, model) -> None:
        """Every rank evaluates (and rank 0 saves) the same model: rank 0's BatchNorm running
        statistics (per rank without --sync-bn) are copied to all."""
        if self.active:
            broadcast_module(model, self.world, parameters=False)

    def main_first(self, fn, *args):
        """``fn(*args)`` on rank 0, then on the others once it succeeded (a data set is
        downloaded and unpacked once, into the shared cache); no deadline for the others."""
        if not self.active:
            return fn(*args)
        kept = []   # rank 0's result stays here: only the outcome (None or an error) is sent
        self.world.from_main(lambda: kept.append(fn(*args)), limit=float("inf"))
        return kept[0] if self.is_main else fn(*args)

    def from_main(self, fn, *args, **kwargs):
        return self.world.from_main(fn, *args, **kwargs)


__all__ = ["DataParallel", "sync_batchnorm", "broadcast_module"]

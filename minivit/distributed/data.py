"""Each rank's share of every batch: the global batch of one process, split over the ranks.

Every rank computes the same seeded order of the epoch (``CIFARLoader.order``) and the same
global batches of ``batch_size`` images; rank r takes its part of each (``np.array_split``:
parts differ by at most one image), so every image is used once per epoch whatever the number
of ranks. The last batch of an epoch may be short; when it has fewer images than there are
ranks it is joined to the one before, so no rank ever gets an empty part. Augmentation and
mixing draw from ``default_rng([seed, epoch, 1, batch, rank])``: a stream per rank, fixed by the
seed, so a run is reproducible and a resumed run exact.
"""
from __future__ import annotations

import numpy as np

from ..data import CIFARLoader


class ShardedLoader(CIFARLoader):
    """``loader``'s batches, rank ``rank`` of ``world_size`` taking its part of each one.

    ``len()`` is the number of global batches (steps); ``global_size(index)`` the images of
    global batch ``index`` on all ranks together."""

    def __init__(self, loader: CIFARLoader, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.__dict__.update(loader.__dict__)
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        n, b = len(self.x), self.batch_size
        if self.drop_last:
            return n // b
        steps = -(-n // b)
        if steps > 1 and 0 < n % b < self.world_size:
            steps -= 1   # a last batch too small to share: joined to the one before
        return steps

    def bounds(self, index: int) -> tuple[int, int]:
        """Where global batch ``index`` starts and ends in the epoch's order."""
        start = index * self.batch_size
        last = index == len(self) - 1 and not self.drop_last
        return start, len(self.x) if last else min(len(self.x), start + self.batch_size)

    def global_size(self, index: int) -> int:
        start, end = self.bounds(index)
        return end - start

    def batch_indices(self, index: int, order: np.ndarray) -> np.ndarray:
        start, end = self.bounds(index)
        return np.array_split(order[start:end], self.world_size)[self.rank]

    def batch_rng(self, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, 1, index, self.rank])

    def current_index(self) -> int:
        """The index of the batch the iteration handed out last."""
        return self._position - 1

    def __repr__(self) -> str:
        return f"Sharded({super().__repr__()}, rank={self.rank}/{self.world_size})"

"""Float64 gradient equivalence of data parallelism, one rank of it (tests/test_distributed.py):

    mpiexec -n 2 python tests/dist_grads.py {mpi,nccl-fake}

For a ViT and a BatchNorm network (SyncBatchNorm), every rank computes the gradient of its
part of a batch through ``DataParallel.backward`` (bucketed allreduce, loss weighting of an
uneven part); rank 0 also computes the whole batch's gradient in one process. Buckets are
tiny so there are many, started during backward. Prints one line per case on rank 0:
``CASE max-relative-difference buckets-started-during-backward/buckets``.
``nccl-fake`` (the ViT only): gradients go through ``NCCLTransport`` over ``fake_nccl`` (a stand-in of
``cupy.cuda.nccl`` that sums over MPI, fed raw device pointers as the real one is).
"""
from __future__ import annotations

import sys

import numpy as np

import minivit
from minivit.data import CIFARLoader
from minivit.distributed import (DataParallel, DistributedDataParallel, NCCLTransport,
                                 ShardedLoader, get_world, sync_batchnorm)
from minivit.models import create_model
from minivit.nn import functional as F

CASES = {"vit": ("vit_cifar", {"depth": 2, "embed_dim": 32, "num_heads": 2}),
         "botnet": ("botnet_cifar", {"stem_chs": 8, "widths": (16, 32, 32), "depths": (1, 1, 1),
                                     "num_heads": 2})}


def build(name, args):
    minivit.manual_seed(0)
    model = create_model(name, num_classes=10, **args)
    for t in list(model.parameters()) + [b for _, b in model.named_buffers()]:
        if t.data.dtype == np.float32:
            t.data = t.data.astype(np.float64)
    return model


def main() -> None:
    mode = sys.argv[1]
    world = get_world()
    rng = np.random.default_rng(0)
    n = 33   # 17 + 16: the uneven split and its loss weighting
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    loader = CIFARLoader(x, y, batch_size=n, shuffle=True, seed=3, dtype=np.float64,
                         prefetch=False)
    for case, (name, args) in CASES.items():
        if mode == "nccl-fake" and name == "botnet_cifar":
            continue   # SyncBatchNorm over NCCL needs GPU arrays, which the fake has not
        full = build(name, args)
        xb, yb = loader.make_batch(0, 0)
        F.cross_entropy(full(minivit.tensor(xb)), minivit.tensor(yb)).backward()

        model = build(name, args)
        dp = DataParallel(world)
        transport = None
        if mode == "nccl-fake":
            import fake_nccl  # noqa: PLC0415

            transport = NCCLTransport(world, fake_nccl.cupy(), fake_nccl)
        else:
            from minivit.distributed import MPITransport  # noqa: PLC0415

            transport = MPITransport(world)
        if name == "botnet_cifar":
            sync_batchnorm(model, transport.sum_)
        dp.ddp = DistributedDataParallel(model, world, transport, bucket_mb=0.01)
        started_in_backward = []
        start = transport.start
        buckets = {id(b.buffer) for b in dp.ddp.buckets}

        def recording_start(buf):   # a bucket's allreduce (not a SyncBatchNorm sum)
            if id(buf) in buckets:
                started_in_backward.append(in_backward[0])
            return start(buf)
        transport.start = recording_start
        shard = ShardedLoader(loader, world.rank, world.size)
        shard.set_epoch(0)
        for step in range(2):   # the first step learns the gradient counts; the second overlaps
            started_in_backward.clear()
            for p in model.parameters():
                p.grad = None
            for xs, ys in shard:
                loss = F.cross_entropy(model(minivit.tensor(xs)), minivit.tensor(ys))
                in_backward = [True]
                finish = dp.ddp.finish_gradients

                def finishing():
                    in_backward[0] = False
                    finish()
                dp.ddp.finish_gradients = finishing
                dp.backward(loss, shard)
                del dp.ddp.finish_gradients
            shard.set_epoch(0)
        worst = 0.0
        for (k, p), q in zip(model.named_parameters(), full.parameters()):
            scale = np.abs(q.grad.numpy()).max() + 1e-300
            worst = max(worst, np.abs(p.grad.numpy() - q.grad.numpy()).max() / scale)
        if world.is_main:
            print(f"{case} {worst:.3g} {sum(started_in_backward)}/{len(dp.ddp.buckets)}",
                  flush=True)


if __name__ == "__main__":
    main()

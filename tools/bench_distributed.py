"""Scaling of data-parallel training on one machine (docs/distributed.md):

    OPENBLAS_NUM_THREADS=2 MINIVIT_NUM_THREADS=2 python tools/bench_distributed.py vit_cifar
    OPENBLAS_NUM_THREADS=1 MINIVIT_NUM_THREADS=1 mpiexec -n 2 python tools/bench_distributed.py vit_cifar

Times ``--steps`` training steps (after 2 warm-up steps) of the model at the global batch
``--batch`` (AdamW, crop + flip, the CIFAR subset), exactly as ``minivit train`` runs them, and
prints on rank 0 one JSON line: ranks, threads per rank, images/s, the mean time per step
blocked waiting for the gradient sums after backward (``finish_gradients``: what overlap did
not hide), the time of one blocking allreduce of the whole gradient, and the gradient bytes
each rank sends per step. ``--bytes-only``: just the gradient bytes of every CIFAR model.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as the ``minivit`` command: before NumPy
import numpy as np  # noqa: E402

import minivit  # noqa: E402
import minivit.runtime  # noqa: E402
from minivit import optim
from minivit.data import CIFARLoader, load_dataset
from minivit.distributed import DistributedDataParallel, ShardedLoader, get_world
from minivit.models import create_model
from minivit.nn import functional as F

CIFAR_MODELS = ("vit_cifar", "botnet_cifar", "ceit_cifar", "maxvit_cifar", "mlp_mixer_cifar")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="vit_cifar")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--bytes-only", action="store_true")
    args = ap.parse_args()
    if args.bytes_only:
        for name in CIFAR_MODELS:
            n = sum(p.numel() for p in create_model(name, num_classes=10).parameters())
            print(json.dumps({"model": name, "params": n, "gradient_bytes": 4 * n}))
        return
    minivit.runtime.tune()   # the allocator settings training runs with (minivit/runtime.py)
    world = get_world()
    minivit.manual_seed(0)
    ds = load_dataset("cifar10-subset")
    loader = CIFARLoader(ds.x_train, ds.y_train, batch_size=args.batch, augment="standard")
    if world.distributed:
        loader = ShardedLoader(loader, world.rank, world.size)
    model = create_model(args.model, num_classes=10)
    ddp = DistributedDataParallel(model, world) if world.distributed else None
    opt = optim.AdamW(optim.param_groups_weight_decay(model, 0.05), lr=1e-3)
    times, waits = [], []
    batches = iter(loader)
    for step in range(args.steps + 2):
        xb, yb = next(batches)
        world.barrier("the step start")
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(minivit.Tensor(xb)), minivit.Tensor(yb),
                               label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        if ddp is not None:
            ddp.finish_gradients()
        opt.step()
        float(loss.item())
        world.barrier("the step end")
        if step >= 2:
            times.append(time.perf_counter() - t0)
            waits.append(ddp.last_wait_s if ddp is not None else 0.0)
    grad = np.ones(sum(p.numel() for p in model.parameters()), np.float32)
    allreduce = []
    for _ in range(10):
        world.barrier("the allreduce timing")
        t0 = time.perf_counter()
        world.allreduce_(grad)
        allreduce.append(time.perf_counter() - t0)
    if world.is_main:
        step_s = statistics.median(times)
        print(json.dumps({
            "model": args.model, "ranks": world.size,
            "threads_per_rank": int(os.environ.get("MINIVIT_NUM_THREADS", "0")) or None,
            "batch": args.batch, "step_s": round(step_s, 4),
            "images_per_s": round(args.batch / step_s, 1),
            "wait_after_backward_ms": round(1e3 * statistics.median(waits), 2),
            "allreduce_ms": round(1e3 * statistics.median(allreduce), 2) if world.distributed
            else None,
            "gradient_bytes": int(grad.nbytes),
            "buckets": len(ddp.buckets) if ddp is not None else None}), flush=True)


if __name__ == "__main__":
    main()

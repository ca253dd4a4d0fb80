"""Where a training step's time goes, op by op: ``python tools/profile_step.py maxvit_cifar``.

A script of the repository, not installed with the package: run it from your clone, with
minivit installed there (``pip install -e .``).

Wraps every ``Function`` subclass's ``forward`` and ``backward`` with a timer, runs a few
training steps at batch 128 (forward, cross entropy, backward, AdamW step) and prints, for
each op, the milliseconds per step spent in its forward and its backward, the share of the
step, and the FLOPs the engine counts for it. What the ops do not account for is engine and
Python overhead (graph recording, gradient accumulation, the optimizer).
"""
from __future__ import annotations

import argparse
import collections
import functools
import time

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as the ``minivit`` command: before NumPy
import minivit  # noqa: E402
import minivit.runtime  # noqa: E402
import numpy as np  # noqa: E402
from minivit import optim
from minivit.autograd.flops import count_flops
from minivit.autograd.function import Function
from minivit.models import create_model
from minivit.nn import functional as F


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def instrument(times: collections.defaultdict, flops: collections.defaultdict,
               by_shape: bool) -> None:
    """Time every op's forward and backward into ``times[(op, pass)]``; forward FLOPs into
    ``flops[op]``. With ``by_shape`` the op's key carries its input shapes."""
    counter = count_flops().__enter__()  # stays active: the ops report their FLOPs to it
    for cls in set(_subclasses(Function)):
        for meth in ("forward", "backward"):
            fn = cls.__dict__.get(meth)
            if fn is None:
                continue

            def timed(ctx, *args, __fn=fn, __name=cls.op_name(), __meth=meth, **kw):
                if __meth == "forward":
                    shapes = [tuple(a.shape) for a in args if hasattr(a, "shape")]
                    ctx._profile_key = f"{__name} {shapes}" if by_shape else __name
                key = getattr(ctx, "_profile_key", __name)
                f0, t0 = counter.total, time.perf_counter()
                try:
                    return __fn(ctx, *args, **kw)
                finally:
                    times[(key, __meth)] += time.perf_counter() - t0
                    flops[key] += counter.total - f0

            setattr(cls, meth, functools.wraps(fn)(timed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--by-shape", action="store_true", help="one row per op and input shapes")
    args = ap.parse_args()

    minivit.runtime.tune()   # the allocator settings training runs with (minivit/runtime.py)
    minivit.manual_seed(0)
    model = create_model(args.model, num_classes=10)
    rng = np.random.default_rng(0)
    x = minivit.tensor(rng.standard_normal((args.batch, 3, 32, 32), dtype=np.float32))
    y = minivit.tensor(rng.integers(0, 10, args.batch))
    opt = optim.AdamW(optim.param_groups_weight_decay(model, 0.05), lr=1e-4, weight_decay=0.05)
    phases = collections.defaultdict(float)

    def step():
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        t1 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        phases["forward"] += t1 - t0
        phases["backward"] += t2 - t1
        phases["optimizer"] += t3 - t2

    step()  # warm-up, untimed
    times: collections.defaultdict = collections.defaultdict(float)
    flops: collections.defaultdict = collections.defaultdict(int)
    instrument(times, flops, args.by_shape)
    phases.clear()
    for _ in range(args.steps):
        step()
    n = args.steps
    total = sum(phases.values()) / n
    print(f"{args.model}, batch {args.batch}: {1000 * total:.0f} ms per step "
          + ", ".join(f"{k} {1000 * v / n:.0f} ms" for k, v in phases.items()))
    ops = sorted(times.items(), key=lambda kv: -kv[1])
    width = max(28, *(len(k[0]) for k, _ in ops[:args.top]))
    print(f"{'op':{width}s} {'pass':9s} {'ms/step':>8s} {'share':>6s} {'GFLOP/s':>8s}")
    for (name, meth), t in ops[:args.top]:
        # a backward costs about twice its forward's FLOPs (two products per product)
        f = flops[name] * (1 if meth == "forward" else 2)
        rate = f"{f / t / 1e9:8.1f}" if f else ""
        print(f"{name:{width}s} {meth:9s} {1000 * t / n:8.1f} {100 * t / n / total:5.1f}% {rate}")
    in_ops = sum(times.values()) / n
    print(f"{'(all ops)':38s} {1000 * in_ops:8.1f} {100 * in_ops / total:5.1f}%")
    print(f"{'(outside ops: engine, optimizer)':38s} {1000 * (total - in_ops):8.1f} "
          f"{100 * (total - in_ops) / total:5.1f}%")


if __name__ == "__main__":
    main()

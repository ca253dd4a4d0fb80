"""``minivit bench``: throughput, memory and utilisation of the models (the five CIFAR models
by default; any registered model, each fed images of its own input size, e.g. 224x224 for
``vit_tiny_patch16_224``).

For each model: forward images/s (eval, no grad), training-step images/s (forward, loss,
backward, AdamW step), peak memory (RSS on the CPU, CuPy pool bytes on the GPU), the model's
forward FLOPs per image as counted by the engine, and utilisation: the training step's
achieved FLOP/s (3x forward FLOPs) over the float32 matmul FLOP/s that this same process
measures first (a 1024x1024x1024 product), right before the model: on a shared machine
whose speed drifts, each model is compared with the rate of its own moment. Figures are
medians of ``--steps`` timed steps after warm-up, with min and max. The same probe runs once
more after the steps ("after"); a model whose two probes differ by more than 20% is named in
a note under the table, since the machine's speed changed while it ran.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

import minivit
from .autograd import backend
from .autograd.flops import count_flops

CIFAR_MODELS = ["vit_cifar", "mlp_mixer_cifar", "maxvit_cifar", "botnet_cifar", "ceit_cifar"]


def _sync(device: str) -> None:
    if device == "cuda":
        backend._import_cupy().cuda.Device().synchronize()


def _timed(fn, steps: int, warmup: int, device: str) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def matmul_gflops(device: str = "cpu", n: int = 1024, steps: int = 10) -> float:
    """float32 GFLOP/s of one n x n x n matrix product (median)."""
    xp = np if device == "cpu" else backend._import_cupy()
    a = xp.asarray(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    b = xp.asarray(np.random.default_rng(1).standard_normal((n, n), dtype=np.float32))
    times = _timed(lambda: a @ b, steps, 3, device)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def _reset_peak_rss() -> None:
    try:  # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_model(name: str, batch: int = 128, device: str = "cpu", steps: int = 10,
                matmul: float | None = None) -> dict:
    """Measure one model; returns the JSON row of ``minivit bench --json``. Without ``matmul``
    this process measures the float32 matmul rate itself, just before the model."""
    from . import optim
    from .models import create_model
    from .nn import functional as F

    probe_after = matmul is None
    if matmul is None:
        matmul = matmul_gflops(device)
    minivit.manual_seed(0)
    model = create_model(name, num_classes=10).to(device)
    (h, w), chans = model.img_size, model.in_chans   # each model at its own input size
    rng = np.random.default_rng(0)
    x = minivit.tensor(rng.standard_normal((batch, chans, h, w), dtype=np.float32), device=device)
    y = minivit.tensor(rng.integers(0, 10, batch), device=device)
    opt = optim.AdamW(optim.param_groups_weight_decay(model, 0.05), lr=1e-4, weight_decay=0.05)

    def forward():
        with minivit.no_grad():
            model(x)

    def train_step():
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.eval()
    with count_flops() as c, minivit.no_grad():
        model(x)
    flops_per_img = c.total / batch
    fwd = _timed(forward, steps, 2, device)
    model.train()
    pool = backend._import_cupy().get_default_memory_pool() if device == "cuda" else None
    _reset_peak_rss()
    train = _timed(train_step, steps, 2, device)
    peak = (pool.total_bytes() / 2 ** 20) if pool is not None else _peak_rss_mb()
    train_ips = batch / statistics.median(train)
    row = {
        "model": name, "batch": batch, "device": device, "img_size": [h, w],
        "fwd_imgs_per_s": batch / statistics.median(fwd),
        "train_imgs_per_s": train_ips,
        "peak_mem_mb": peak,
        "gflops_per_img": flops_per_img / 1e9,
        "matmul_gflops": matmul,
        "utilisation": (3 * flops_per_img * train_ips / 1e9) / matmul if matmul else None,
        # the same probe once more after the steps: far from ``matmul``, the machine's speed
        # moved during the run and the utilisation means little
        "matmul_gflops_after": matmul_gflops(device) if probe_after else None,
        "train_step_s": {"median": statistics.median(train), "min": min(train), "max": max(train)},
        "fwd_step_s": {"median": statistics.median(fwd), "min": min(fwd), "max": max(fwd)},
    }
    return row


def _bench_in_subprocess(name: str, args) -> dict:
    """One model in a fresh process, which measures its own matmul rate first."""
    cmd = [sys.executable, "-c",
           "import json, sys, minivit.runtime; minivit.runtime.tune(); "   # as the command
           "from minivit.bench import bench_model; "
           "print(json.dumps(bench_model(*json.loads(sys.argv[1]))))",
           json.dumps([name, args.batch, args.device, args.steps])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark of {name} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(args) -> int:
    if args.batch < 1 or args.steps < 1:
        raise ValueError(f"--batch and --steps must be >= 1, got --batch {args.batch} and "
                         f"--steps {args.steps}")
    device = backend.check_device(args.device)
    names = args.model or CIFAR_MODELS
    from .models import list_models

    unknown = [n for n in names if n not in list_models()]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {', '.join(list_models())}")
    print(f"{device}, batch {args.batch}, median of {args.steps} steps after warm-up; each "
          f"model's process first measures the float32 matmul rate (1024^3) it is compared with")
    head = (f"{'model':20s} {'input':>7s} {'fwd img/s':>10s} {'train img/s':>12s} {'step s (min-max)':>18s} "
            f"{'peak MB':>8s} {'GFLOP/img':>10s} {'matmul':>7s} {'util':>6s} {'after':>7s}")
    print(head)
    rows, drifted = [], []
    for name in names:
        if len(names) == 1:
            r = bench_model(name, args.batch, device, args.steps)
        else:  # a fresh process per model, so each peak memory is that model's own
            r = _bench_in_subprocess(name, args)
        rows.append(r)
        s = r["train_step_s"]
        size = "x".join(map(str, r["img_size"]))
        print(f"{name:20s} {size:>7s} {r['fwd_imgs_per_s']:10.1f} {r['train_imgs_per_s']:12.1f} "
              f"{s['median']:7.3f} ({s['min']:.2f}-{s['max']:.2f}) {r['peak_mem_mb']:8.0f} "
              f"{r['gflops_per_img']:10.3f} {r['matmul_gflops']:7.1f} "
              f"{100 * r['utilisation']:5.1f}% {r['matmul_gflops_after']:7.1f}")
        if not 0.8 <= r["matmul_gflops_after"] / r["matmul_gflops"] <= 1.25:
            drifted.append(name)
        sys.stdout.flush()
    if drifted:
        print(f"note: the matmul rate moved by more than 20% between the probes before and after "
              f"({', '.join(drifted)}): the machine's speed changed during the run, so those "
              f"utilisations are unreliable; rerun on an otherwise idle machine")
    if args.json:
        from .checkpoint import atomic_write

        keys = ["model", "batch", "device", "img_size", "fwd_imgs_per_s", "train_imgs_per_s", "peak_mem_mb",
                "gflops_per_img", "matmul_gflops", "utilisation"]
        out = [{k: r[k] for k in keys} for r in rows]
        atomic_write(args.json, lambda f: f.write(json.dumps(out, indent=2).encode()))
        print(f"wrote {args.json}")
    return 0

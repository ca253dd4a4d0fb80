"""Forward + backward time and GFLOP/s of minivit's layers at CIFAR-model shapes (float32).

    python examples/bench_layers.py [--batch 128] [--repeat 7] [--device cpu|cuda]

Each row times one forward and one backward (with a fixed random upstream gradient), best of
``--repeat`` runs after a warm-up. The machine's float32 matmul rate (a 1024^3 product) is
measured in the same run, before every row; the best of these probes is the reference, so the
rows read as a fraction of what the BLAS reaches here. On a shared, busy machine raise
``--repeat``: the best-of filters out other processes' bursts.

FLOP counts: a conv or matmul forward is 2*M*N*K, its backward twice that (input and weight
gradients); attention counts its two matmuls (QK^T and PV). Layer norm is memory-bound, so its
row reports GB/s over five passes of x's size (read x, write y; read x and dy, write dx).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as the ``minivit`` command: before NumPy
import minivit  # noqa: E402
import minivit.runtime  # noqa: E402
import numpy as np  # noqa: E402

import minivit.nn.functional as F
from minivit.autograd import backend


def best_time(fn, repeat: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_gflops(device: str, repeat: int, sync) -> float:
    xp = np if device == "cpu" else backend._import_cupy()
    a = xp.asarray(np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32))
    b = xp.asarray(np.random.default_rng(1).standard_normal((1024, 1024), dtype=np.float32))
    return 2 * 1024**3 / best_time(lambda: a @ b, max(repeat, 10), sync) / 1e9


def randn(shape, device):
    data = np.random.default_rng(len(shape)).standard_normal(shape, dtype=np.float32)
    return minivit.tensor(data, device=device, requires_grad=True)


def fwd_bwd(fn, *inputs):
    """One forward and one backward of ``fn(*inputs)``, with a fixed random upstream gradient."""
    out = fn(*inputs)
    upstream = randn(out.shape, out.device).detach()

    def step():
        for t in inputs:
            t.grad = None
        y = fn(*inputs)
        y.backward(upstream)
    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    minivit.runtime.tune()   # the allocator settings training runs with (minivit/runtime.py)
    dev, n, rep = args.device, args.batch, args.repeat
    if dev == "cuda":
        backend.check_device("cuda")
        cp = backend._import_cupy()
        sync = cp.cuda.Device().synchronize
    else:
        def sync():
            return None

    probes = []  # matmul GFLOP/s, measured before each row

    def timed(step) -> float:
        probes.append(matmul_gflops(dev, rep, sync))
        return best_time(step, rep, sync)

    rows = []  # (name, seconds, gflop or None, note)

    def conv_row(name, c, o, hw, stride, groups=1):
        x, w, b = randn((n, c, hw, hw), dev), randn((o, c // groups, 3, 3), dev), randn((o,), dev)
        ho = (hw + 2 - 3) // stride + 1
        gflop = 3 * 2 * n * ho * ho * o * (c // groups) * 9 / 1e9
        step = fwd_bwd(lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=1,
                                                groups=groups), x, w, b)
        rows.append((name, timed(step), gflop, ""))

    conv_row("conv 3x3 s1 64->64 16x16", 64, 64, 16, 1)
    conv_row("conv 3x3 s1 128->128 8x8", 128, 128, 8, 1)
    conv_row("conv 3x3 s2 64->64 16x16", 64, 64, 16, 2)
    conv_row("conv 3x3 s2 128->128 16x16", 128, 128, 16, 2)
    conv_row("conv 3x3 s1 256->256 8x8", 256, 256, 8, 1)
    conv_row("depthwise 3x3 s1 256 8x8", 256, 256, 8, 1, groups=256)

    tokens, dim, heads = 65, 192, 3
    if hasattr(F, "linear"):
        x, w, b = randn((n * tokens, dim), dev), randn((3 * dim, dim), dev), randn((3 * dim,), dev)
        rows.append((f"linear ({n}*{tokens}, {dim})->{3 * dim}",
                     timed(fwd_bwd(F.linear, x, w, b)),
                     3 * 2 * n * tokens * dim * 3 * dim / 1e9, ""))
    else:
        rows.append(("linear", None, None, "skipped: F.linear not available yet"))
    if hasattr(F, "layer_norm"):
        x, w, b = randn((n, tokens, dim), dev), randn((dim,), dev), randn((dim,), dev)
        t = timed(fwd_bwd(lambda x, w, b: F.layer_norm(x, (dim,), w, b), x, w, b))
        rows.append((f"layer_norm ({n}, {tokens}, {dim})", t, None,
                     f"{5 * x.numel() * 4 / t / 1e9:.1f} GB/s (5 passes over x)"))
    else:
        rows.append(("layer_norm", None, None, "skipped: F.layer_norm not available yet"))
    if hasattr(F, "scaled_dot_product_attention"):
        q, k, v = (randn((n, heads, tokens, dim // heads), dev) for _ in range(3))
        rows.append((f"attention q,k,v ({n}, {heads}, {tokens}, {dim // heads})",
                     timed(fwd_bwd(F.scaled_dot_product_attention, q, k, v)),
                     3 * 4 * n * heads * tokens * tokens * (dim // heads) / 1e9, ""))
    else:
        rows.append(("attention", None, None, "skipped: scaled_dot_product_attention missing"))

    probes.append(matmul_gflops(dev, rep, sync))
    mm = max(probes)
    print(f"device {dev}, batch {n}, float32; forward+backward, best of {rep}")
    print(f"float32 matmul 1024^3: {mm:.1f} GFLOP/s (best of {len(probes)} probes; worst "
          f"{min(probes):.1f})")
    print(f"{'layer':<40}{'ms':>9}{'GFLOP/s':>10}{'% matmul':>10}")
    times = {}
    for name, t, gflop, note in rows:
        if t is None:
            print(f"{name:<40}{'':>29}  {note}")
            continue
        times[name] = t
        rate = f"{gflop / t:10.1f}{100 * gflop / t / mm:9.0f}%" if gflop else f"{'':>20}"
        print(f"{name:<40}{1e3 * t:9.1f}{rate}  {note}".rstrip())
    dw, plain = times["depthwise 3x3 s1 256 8x8"], times["conv 3x3 s1 256->256 8x8"]
    convs = [r for r in rows if r[0].startswith("conv 3x3")]
    worst = min(convs, key=lambda r: r[2] / r[1])
    print(f"conv 3x3 (stride 1 and 2) fwd+bwd: {100 * worst[2] / worst[1] / mm:.0f}% of matmul "
          f"at worst, {worst[0]} (target >= 40%)")
    print(f"depthwise 3x3 (256 ch, 8x8): {1e3 * dw:.1f} ms vs {1e3 * plain:.1f} ms for the plain "
          f"3x3 conv with the same channels ({plain / dw:.1f}x faster; target: not slower)")


if __name__ == "__main__":
    main()

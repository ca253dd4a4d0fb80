"""The PyTorch side of ``minivit bench``: the same CIFAR models (timm's modules with the
``vit_cifar`` and ``mlp_mixer_cifar`` configurations), the same batch and step, measured the
same way, so the two engines can be compared on this machine. Runs OUTSIDE the project's
environment, in a scratch one that has torch and timm (never a minivit dependency):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm
    /tmp/refvenv/bin/python tools/bench_torch.py [--batch 128] [--steps 10]

then ``minivit bench --model vit_cifar mlp_mixer_cifar`` right after, on the idle machine.
(timm imports torchvision, and PyPI's torchvision does not import beside the torch 2.13.0 CPU
file on this machine's disk, hence the matching 2.14.1 pair.)
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from timm.models.mlp_mixer import MlpMixer
from timm.models.vision_transformer import VisionTransformer

MODELS = {
    "vit_cifar": lambda: VisionTransformer(img_size=32, patch_size=4, embed_dim=192, depth=6,
                                           num_heads=3, mlp_ratio=2.0, num_classes=10),
    "mlp_mixer_cifar": lambda: MlpMixer(img_size=32, patch_size=4, embed_dim=192, num_blocks=8,
                                        mlp_ratio=(0.5, 2.0), num_classes=10),
}


def matmul_gflops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def median_time(fn, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--model", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"median of {args.steps} steps after 3 warm-up")
    print(f"{'model':<18}{'fwd img/s':>11}{'train img/s':>13}{'matmul GFLOP/s':>16}")
    for name in args.model:
        probe = matmul_gflops()
        model = MODELS[name]()
        x = torch.randn(args.batch, 3, 32, 32)
        y = torch.randint(0, 10, (args.batch,))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

        def forward():
            with torch.no_grad():
                model(x)

        def train_step():
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()

        model.eval()
        fwd = median_time(forward, args.steps)
        model.train()
        step = median_time(train_step, args.steps)
        print(f"{name:<18}{args.batch / fwd:>11.1f}{args.batch / step:>13.1f}{probe:>16.1f}")


if __name__ == "__main__":
    main()

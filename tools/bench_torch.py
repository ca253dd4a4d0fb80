"""The PyTorch side of ``minivit bench``: the same five CIFAR models (timm's modules in the
``vit_cifar``, ``mlp_mixer_cifar``, ``maxvit_cifar`` and ``botnet_cifar`` configurations, and
the official CeiT modules as re-stated in ``make_reference_ceit.py`` in ``ceit_cifar``'s), the
same batch and step, measured the same way, so the two engines can be compared on this
machine. Runs OUTSIDE the project's environment, in a scratch one that has torch and timm
(never a minivit dependency):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm
    /tmp/refvenv/bin/python tools/bench_torch.py [--batch 128] [--steps 10]

then ``minivit bench`` right after, on the idle machine.
(timm imports torchvision, and PyPI's torchvision does not import beside the torch 2.13.0 CPU
file on this machine's disk, hence the matching 2.14.1 pair.)
"""
from __future__ import annotations

import argparse
import statistics
import time

import os
import sys

import torch
from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg
from timm.models.mlp_mixer import MlpMixer
from timm.models.vision_transformer import VisionTransformer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_reference_ceit import CeIT, Image2Tokens  # noqa: E402
from make_reference_maxvit import CifarTwin  # noqa: E402


def botnet_cifar() -> torch.nn.Module:
    """7x7/2 stem (64 ch, no pool), bottlenecks 128/256/512 (depth 2 each, strides 1, 2, 1),
    the last stage's blocks with 4-head self-attention at 8x8 (see docs/recipe.md)."""
    cfg = ByoModelCfg(
        blocks=(ByoBlockCfg(type="bottle", d=2, c=128, s=1, gs=0, br=0.25),
                ByoBlockCfg(type="bottle", d=2, c=256, s=2, gs=0, br=0.25),
                ByoBlockCfg(type="self_attn", d=2, c=512, s=1, gs=0, br=0.25)),
        stem_chs=64, stem_type="7x7", stem_pool="", fixed_input_size=True,
        self_attn_layer="bottleneck", self_attn_kwargs=dict())
    return ByobNet(cfg, num_classes=10, img_size=32)


def ceit_cifar() -> torch.nn.Module:
    """I2T 3x3/1 conv (32 ch) + BN + 3x3/2 max pool, 2x2 patches, width 192, depth 6, 3 heads."""
    return CeIT(Image2Tokens(3, 32, kernel_size=3, stride=1), img_size=32, patch_size=2,
                num_classes=10, embed_dim=192, depth=6, num_heads=3, mlp_ratio=2.0,
                act_last=True)


MODELS = {
    "vit_cifar": lambda: VisionTransformer(img_size=32, patch_size=4, embed_dim=192, depth=6,
                                           num_heads=3, mlp_ratio=2.0, num_classes=10),
    "mlp_mixer_cifar": lambda: MlpMixer(img_size=32, patch_size=4, embed_dim=192, num_blocks=8,
                                        mlp_ratio=(0.5, 2.0), num_classes=10),
    "maxvit_cifar": lambda: CifarTwin(dims=(64, 128), depths=(1, 2), strides=(1, 2),
                                      stem_width=64, img=32, window=4, dim_head=32),
    "botnet_cifar": botnet_cifar,
    "ceit_cifar": ceit_cifar,
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

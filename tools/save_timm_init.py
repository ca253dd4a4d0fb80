"""Save timm's initial weights of ``vit_cifar`` (runs OUTSIDE the project, needs torch + timm),
for ``minivit train --init-weights``: a 10-epoch minivit run from the very weights PyTorch
starts from, to compare whole training runs like for like.

    python -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch timm
    /tmp/refvenv/bin/python tools/save_timm_init.py --seed 0 --out timm_vit_cifar_seed0.npz
    minivit train --model vit_cifar --dataset cifar10 --init-weights timm_vit_cifar_seed0.npz

timm's ``VisionTransformer`` in ``vit_cifar``'s configuration (patch 4, width 192, depth 6,
3 heads, MLP ratio 2, qkv bias), built right after ``torch.manual_seed(seed)``, with timm's
default initialisation; its state-dict names are minivit's.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--num-classes", type=int, default=10)
parser.add_argument("--out", default="timm_vit_cifar_seed0.npz")
args = parser.parse_args()

torch.manual_seed(args.seed)
model = VisionTransformer(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3,
                          mlp_ratio=2.0, qkv_bias=True, num_classes=args.num_classes)
state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
folder = os.path.dirname(os.path.abspath(args.out))
fd, tmp = tempfile.mkstemp(suffix=".npz", dir=folder)   # written whole, then renamed
with os.fdopen(fd, "wb") as f:
    np.savez(f, **state)
os.replace(tmp, args.out)
print(f"{args.out}: {len(state)} arrays, {sum(v.size for v in state.values()):,} numbers")

"""Train vit_cifar in minivit and timm's VisionTransformer in lockstep (runs OUTSIDE the
project, needs torch + timm): same initial weights, same augmented batches, the default recipe.

    python -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch timm
    /tmp/refvenv/bin/python tools/compare_training_with_timm.py --data PATH [--steps 40]

Prints both losses and the largest weight difference every 5 steps. If minivit computes the same
training as PyTorch, the losses agree to float32 rounding and the weights drift apart only by
rounding (about 1e-7 per step); a wrong gradient, optimizer or schedule shows in the first steps.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_weight_decay

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import minivit  # noqa: E402
import minivit.nn.functional as F  # noqa: E402
from minivit import optim  # noqa: E402
from minivit.data import CIFARLoader, load_dataset  # noqa: E402
from minivit.models import create_model  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--data", default=None,
                    help="a CIFAR-10 folder or .tar.gz (default: the download cache, as "
                         "`minivit train --dataset cifar10` uses)")
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--epochs", type=int, default=10, help="length of the LR schedule")
parser.add_argument("--every", type=int, default=5, help="print every N steps")
args = parser.parse_args()

torch.manual_seed(0)
torch.set_num_threads(1)
ds = load_dataset("cifar10", args.data, progress=False)
loader = CIFARLoader(ds.x_train, ds.y_train, batch_size=128, shuffle=True, seed=0,
                     augment="standard")
batches = []
for xb, yb in loader:
    batches.append((xb.copy(), yb.copy()))
    if len(batches) == args.steps:
        break

tm = VisionTransformer(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3,
                       mlp_ratio=2.0, qkv_bias=True, num_classes=10)
mm = create_model("vit_cifar", num_classes=10)
mm.load_state_dict({k: v.detach().numpy().copy() for k, v in tm.state_dict().items()})

spe = len(loader)
total = spe * args.epochs
topt = torch.optim.AdamW(param_groups_weight_decay(tm, 0.05), lr=1e-3, weight_decay=0.05)
tsched = torch.optim.lr_scheduler.LambdaLR(topt, lambda s: s / spe if s < spe else 0.5 * (
    1 + math.cos(math.pi * (s - spe) / (total - spe))))
mopt = optim.AdamW(optim.param_groups_weight_decay(mm, 0.05), lr=1e-3, weight_decay=0.05)
msched = optim.lr_scheduler.WarmupCosineLR(mopt, warmup_steps=spe, total_steps=total)
tloss = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

tm.train()
mm.train()
for step, (xb, yb) in enumerate(batches):
    lt = tloss(tm(torch.from_numpy(xb)), torch.from_numpy(yb))
    topt.zero_grad()
    lt.backward()
    topt.step()
    tsched.step()
    lm = F.cross_entropy(mm(minivit.tensor(xb)), yb, label_smoothing=0.1)
    mopt.zero_grad()
    lm.backward()
    mopt.step()
    msched.step()
    if step % args.every == 0 or step == len(batches) - 1:
        tsd, msd = tm.state_dict(), mm.state_dict()
        dw = max(float(np.abs(tsd[k].numpy() - msd[k]).max()) for k in msd)
        print(f"step {step:4d}  loss timm {lt.item():.6f}  minivit {float(lm.item()):.6f}  "
              f"max |dW| {dw:.2e}", flush=True)

"""Make tests/fixtures/ref_vit*.npz: reference logits of timm's VisionTransformer.

Runs OUTSIDE the project, in a scratch virtual environment with torch and timm, e.g.::

    python -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm
    /tmp/refvenv/bin/python tools/make_reference_vit.py

It builds a micro configuration of timm's ViT (32×32 input, 8×8 patches, width 32, depth 2,
2 heads, 10 classes), gives every parameter random non-trivial values, and saves the state
dict as NumPy arrays (keys ``sd/<name>``), a fixed input ``x``, the eval-mode logits and the
minivit constructor arguments (``config``, JSON). tests/test_models_vit.py loads the state dict
strictly into minivit's model and compares logits. Nothing in minivit imports torch.
"""
import json
import os

import numpy as np
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def randomize_(model, gen):
    """Random values for every parameter: weights ~ N(0, 1/fan_in) so activations stay O(1),
    biases N(0, 0.1²), norm weights 1 + N(0, 0.1²), tokens/embeddings N(0, 0.5²)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            if name in ("cls_token", "pos_embed"):
                p.copy_(0.5 * r)
            elif p.ndim >= 2:
                p.copy_(r / np.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * r)
            else:
                p.copy_(0.1 * r)


def make(name, **kw):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    cfg = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2,
               mlp_ratio=4.0, qkv_bias=True, **kw)
    model = VisionTransformer(num_classes=10, **cfg).eval()
    randomize_(model, gen)
    x = torch.randn((2, 3, 32, 32), generator=gen)
    with torch.no_grad():
        logits = model(x)
    out = {f"sd/{k}": v.detach().numpy() for k, v in model.state_dict().items()}
    out.update(x=x.numpy(), logits=logits.numpy(),
               config=np.array(json.dumps(dict(num_classes=10, **cfg))),
               versions=np.array(f"torch {torch.__version__}, timm {timm.__version__}"))
    path = os.path.join(OUT, name)
    np.savez_compressed(path, **out)
    print(f"{path}: {len(model.state_dict())} keys, {os.path.getsize(path)} bytes, "
          f"logits std {logits.std():.3f}")


if __name__ == "__main__":
    make("ref_vit.npz", global_pool="token")
    make("ref_vit_gap.npz", global_pool="avg")

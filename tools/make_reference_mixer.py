"""Make tests/fixtures/ref_mixer.npz: reference logits of timm's MlpMixer.

Runs OUTSIDE the project, in a scratch virtual environment with torch and timm, e.g.::

    python -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm
    /tmp/refvenv/bin/python tools/make_reference_mixer.py

Micro configuration: 32×32 input, 8×8 patches (16 tokens), width 32, 2 blocks, token/channel
MLP ratios (0.5, 4), 10 classes; every parameter random. Saves the state dict (``sd/<name>``),
the input ``x``, the eval-mode logits and the minivit constructor arguments (``config``, JSON).
"""
import json
import os

import numpy as np
import timm
import torch
from timm.models.mlp_mixer import MlpMixer

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def randomize_(model, gen):
    """Weights ~ N(0, 1/fan_in), biases N(0, 0.1²), norm weights 1 + N(0, 0.1²)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            if p.ndim >= 2:
                p.copy_(r / np.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * r)
            else:
                p.copy_(0.1 * r)


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(4321)
    model = MlpMixer(num_classes=10, img_size=32, patch_size=8, in_chans=3, num_blocks=2,
                     embed_dim=32, mlp_ratio=(0.5, 4.0)).eval()
    randomize_(model, gen)
    x = torch.randn((2, 3, 32, 32), generator=gen)
    with torch.no_grad():
        logits = model(x)
    cfg = dict(num_classes=10, img_size=32, patch_size=8, in_chans=3, depth=2, embed_dim=32,
               mlp_ratio=[0.5, 4.0])
    out = {f"sd/{k}": v.detach().numpy() for k, v in model.state_dict().items()}
    out.update(x=x.numpy(), logits=logits.numpy(), config=np.array(json.dumps(cfg)),
               versions=np.array(f"torch {torch.__version__}, timm {timm.__version__}"))
    path = os.path.join(OUT, "ref_mixer.npz")
    np.savez_compressed(path, **out)
    print(f"{path}: {len(model.state_dict())} keys, {os.path.getsize(path)} bytes, "
          f"logits std {logits.std():.3f}")


if __name__ == "__main__":
    main()

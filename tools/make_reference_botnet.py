"""Make the BoTNet reference fixtures from timm (runs OUTSIDE the project, needs torch + timm).

    python -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch timm
    /tmp/refvenv/bin/python tools/make_reference_botnet.py   # -> tests/fixtures/ref_botnet*.npz

Each fixture holds a small model built with timm's own ``ByobNet`` / ``ByoModelCfg`` classes:
its state dict as NumPy arrays (``state/<key>``), a fixed input, the reference logits in eval
mode (float32, and float64 computed from the same float32 weights), and the keyword arguments
that build the same model in minivit (``minivit_kwargs``, JSON). BatchNorm affine parameters
(and the classifier) are randomised and a few train-mode forwards run first, so that running
statistics and the zero-initialised last BN of each block are non-trivial.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import timm
import torch
from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg, interleave_blocks

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")

MICROS = {
    # botnet26t_256 topology in miniature: tiered stem + max pool, a bottleneck then an MHSA
    # block in stage 2 (stride 2), two MHSA blocks in stage 3 (the first one stride 2).
    "ref_botnet.npz": dict(
        timm_cfg=ByoModelCfg(
            blocks=(
                ByoBlockCfg(type="bottle", d=1, c=32, s=1, gs=0, br=0.25),
                interleave_blocks(types=("bottle", "self_attn"), d=2, c=64, s=2, gs=0, br=0.25),
                ByoBlockCfg(type="self_attn", d=2, c=64, s=2, gs=0, br=0.25),
            ),
            stem_chs=16, stem_type="tiered", stem_pool="maxpool", fixed_input_size=True,
            self_attn_layer="bottleneck", self_attn_kwargs=dict()),
        img_size=64,
        minivit_kwargs=dict(
            img_size=64, in_chans=3, stem_type="tiered", stem_chs=16, stem_pool=True,
            widths=[32, 64, 64], depths=[1, 2, 2], strides=[1, 2, 2],
            block_types=["bottle", ["bottle", "self_attn"], "self_attn"], bottle_ratio=0.25,
            num_heads=4)),
    # botnet_cifar topology in miniature: 7x7/2 stem without pool, MHSA at 8x8 in stage 3.
    "ref_botnet_cifar.npz": dict(
        timm_cfg=ByoModelCfg(
            blocks=(
                ByoBlockCfg(type="bottle", d=1, c=16, s=1, gs=0, br=0.25),
                ByoBlockCfg(type="bottle", d=1, c=32, s=2, gs=0, br=0.25),
                ByoBlockCfg(type="self_attn", d=2, c=64, s=1, gs=0, br=0.25),
            ),
            stem_chs=16, stem_type="7x7", stem_pool="", fixed_input_size=True,
            self_attn_layer="bottleneck", self_attn_kwargs=dict()),
        img_size=32,
        minivit_kwargs=dict(
            img_size=32, in_chans=3, stem_type="7x7", stem_chs=16, stem_pool=False,
            widths=[16, 32, 64], depths=[1, 1, 2], strides=[1, 2, 1],
            block_types=["bottle", "bottle", "self_attn"], bottle_ratio=0.25, num_heads=4)),
}


def randomize_norms(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
        # timm's N(0, 0.01) classifier init would make the logits tiny
        model.head.fc.weight.copy_(0.3 * torch.randn(model.head.fc.weight.shape, generator=gen))


def make(name: str, spec: dict, num_classes: int = 10) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = ByobNet(spec["timm_cfg"], num_classes=num_classes, img_size=spec["img_size"])
    randomize_norms(model, gen)
    s = spec["img_size"]
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, s, s, generator=gen))
    model.eval()
    x = torch.randn(2, 3, s, s, generator=gen)
    with torch.no_grad():
        logits32 = model(x).numpy()
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model64 = model.double()
        logits64 = model64(x.double()).numpy()
    arrays = {f"state/{k}": v.numpy() for k, v in sd.items()}
    n_params = sum(p.numel() for p in model.parameters())
    meta = dict(model=name, timm=timm.__version__, torch=torch.__version__, num_classes=num_classes,
                num_params=n_params, minivit_kwargs=spec["minivit_kwargs"])
    path = os.path.join(OUT, name)
    np.savez_compressed(path, input=x.numpy(), logits=logits32, logits64=logits64,
                        meta=np.array(json.dumps(meta)), **arrays)
    print(f"{name}: {n_params} params, {len(sd)} keys, logits {logits32.shape}, "
          f"|logits| max {np.abs(logits64).max():.3g}, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    for fname, spec in MICROS.items():
        if len(sys.argv) == 1 or fname in sys.argv[1:]:
            make(fname, spec)

"""Make the MaxViT reference fixtures from timm (runs OUTSIDE the project, needs torch + timm).

    python -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch timm
    /tmp/refvenv/bin/python tools/make_reference_maxvit.py   # -> tests/fixtures/ref_maxvit*.npz

Each fixture holds a small model built with timm's own classes: its state dict as NumPy arrays
(``state/<key>``), a fixed input, the reference logits in eval mode (float32, and float64
computed from the same float32 weights), and the keyword arguments that build the same model
in minivit (``minivit_kwargs``, JSON). Norm affine parameters and relative position tables
are randomised and a few train-mode forwards run first, so that BatchNorm running statistics
are non-trivial.

* ``ref_maxvit.npz``: timm ``MaxxVit`` with the ``_tf_cfg()`` of ``maxvit_tiny_tf_224`` (TF
  'same' padding, BN eps 1e-3, tanh GELU, ``RelPosBiasTf``, tanh pre-logits head), two stride-2
  stages, 2 and 4 heads of width 8, window = grid = 4.
* ``ref_maxvit_cifar.npz``: the ``maxvit_cifar`` topology (stem without bias, a stride-1 first
  stage, then a stride-2 stage, final norm + linear head) assembled from timm's ``Stem``,
  ``MaxxVitStage`` and ``ClassifierHead``, since ``MaxxVit`` always strides every stage.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from functools import partial

import numpy as np
import timm
import torch
from timm.layers import ClassifierHead, get_norm_layer
from timm.models.maxxvit import MaxxVit, MaxxVitCfg, MaxxVitStage, Stem, _tf_cfg

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def tf_micro() -> torch.nn.Module:
    cfg = MaxxVitCfg(embed_dim=(8, 16), depths=(1, 2), block_type=("M", "M"), stem_width=8,
                     stem_bias=True, head_hidden_size=16, **_tf_cfg())
    return MaxxVit(cfg, img_size=32, num_classes=10, transformer_dim_head=4,
                   transformer_window_size=(4, 4), transformer_grid_size=(4, 4))


class CifarTwin(torch.nn.Module):
    """stem -> stage (stride 1) -> stage (stride 2) -> LayerNorm2d -> pool + fc; MaxxVit's keys."""

    def __init__(self, dims=(8, 16), depths=(1, 2), strides=(1, 2), stem_width=8, img=32,
                 window=4, dim_head=4, num_classes=10):
        super().__init__()
        tf = _tf_cfg()
        cc = tf["conv_cfg"]
        tc = replace(tf["transformer_cfg"], window_size=(window, window),
                     grid_size=(window, window), dim_head=dim_head)
        self.stem = Stem(3, stem_width, padding=cc.padding, bias=False, act_layer=cc.act_layer,
                         norm_layer=cc.norm_layer, norm_eps=cc.norm_eps)
        feat, prev, stages = img // 2, stem_width, []
        for d, n, s in zip(dims, depths, strides):
            feat //= s
            stages.append(MaxxVitStage(prev, d, stride=s, depth=n, feat_size=(feat, feat),
                                       block_types="M", transformer_cfg=tc, conv_cfg=cc,
                                       drop_path=[0.0] * n))
            prev = d
        self.stages = torch.nn.Sequential(*stages)
        self.norm = partial(get_norm_layer(tc.norm_layer), eps=tc.norm_eps)(prev)
        self.head = ClassifierHead(prev, num_classes, pool_type="avg")

    def forward(self, x):
        return self.head(self.norm(self.stages(self.stem(x))))


MICROS = {
    "ref_maxvit.npz": dict(
        build=tf_micro, img_size=32,
        minivit_kwargs=dict(img_size=32, in_chans=3, stem_width=8, stem_bias=True, dims=[8, 16],
                            depths=[1, 2], strides=[2, 2], window_size=4, dim_head=4,
                            head_hidden_size=16)),
    "ref_maxvit_cifar.npz": dict(
        build=CifarTwin, img_size=32,
        minivit_kwargs=dict(img_size=32, in_chans=3, stem_width=8, stem_bias=False, dims=[8, 16],
                            depths=[1, 2], strides=[1, 2], window_size=4, dim_head=4,
                            head_hidden_size=None)),
}


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))


def make(name: str, spec: dict) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = spec["build"]()
    randomize(model, gen)
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
        logits64 = model.double()(x.double()).numpy()
    arrays = {f"state/{k}": v.numpy() for k, v in sd.items()}
    n_params = sum(p.numel() for p in model.parameters())
    meta = dict(model=name, timm=timm.__version__, torch=torch.__version__, num_classes=10,
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

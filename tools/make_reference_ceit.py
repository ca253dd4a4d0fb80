"""Make tests/fixtures/ref_ceit*.npz: reference logits of the official CeiT modules.

CeiT is not in timm, so this script re-states the modules of the official code
(coeusguo/ceit ``ceit_model.py``: Image2Tokens, HybridEmbed, LocallyEnhancedFeedForward,
Attention, Block with feedforward_type 'leff' / 'lca', CeIT) in torch, with the same
parameter names and the same forward. Runs OUTSIDE the project, in a scratch virtual
environment with torch (timm is not needed for this one)::

    python -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm
    /tmp/refvenv/bin/python tools/make_reference_ceit.py

Micro configuration: 32×32 input, I2T 3×3 stride-1 conv with 8 channels + BN + max pool
(16×16), 4×4 projection (4×4 = 16 tokens), width 32, depth 2, 2 heads, ratio 2, 10 classes.
Every parameter gets random values; two train-mode forwards on other inputs make the BN
running statistics non-trivial. Saved: the state dict (``sd/<name>``, BN buffers included),
the input ``x``, eval-mode ``logits``, train-mode ``logits_train`` on the same ``x`` and the
running statistics after that train-mode forward (``after_train/<name>``), and the minivit
constructor arguments (``config``, JSON). Two files: ``ref_ceit.npz`` is the official code
exactly (no GELU after the last LeFF BatchNorm, minivit ``leff_variant="official"``);
``ref_ceit_paper.npz`` adds that GELU as in the paper (minivit's default).
"""
import copy
import json
import math
import os

import numpy as np
import torch
import torch.nn as nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


class Image2Tokens(nn.Module):
    def __init__(self, in_chans=3, out_chans=64, kernel_size=7, stride=2):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride, kernel_size // 2,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x):
        return self.maxpool(self.bn(self.conv(x)))


class HybridEmbed(nn.Module):
    def __init__(self, backbone, img_size, patch_size, in_chans, embed_dim):
        super().__init__()
        self.backbone = backbone
        with torch.no_grad():
            backbone.eval()
            o = backbone(torch.zeros(1, in_chans, img_size, img_size))
            backbone.train()
        self.num_patches = (o.shape[-2] // patch_size) * (o.shape[-1] // patch_size)
        self.proj = nn.Conv2d(o.shape[1], embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(self.backbone(x)).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class LocallyEnhancedFeedForward(nn.Module):
    def __init__(self, in_features, hidden_features, kernel_size=3, act_last=False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_features, hidden_features, 1)
        self.conv2 = nn.Conv2d(hidden_features, hidden_features, kernel_size,
                               padding=(kernel_size - 1) // 2, groups=hidden_features)
        self.conv3 = nn.Conv2d(hidden_features, in_features, 1)
        self.act = nn.GELU()
        self.act_last = act_last  # False = official code; True = paper (GELU after bn3 too)
        self.bn1 = nn.BatchNorm2d(hidden_features)
        self.bn2 = nn.BatchNorm2d(hidden_features)
        self.bn3 = nn.BatchNorm2d(in_features)

    def forward(self, x):
        b, n, k = x.size()
        cls_token, tokens = torch.split(x, [1, n - 1], dim=1)
        s = int(math.sqrt(n - 1))
        x = tokens.reshape(b, s, s, k).permute(0, 3, 1, 2)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        if self.act_last:
            x = self.act(x)
        tokens = x.flatten(2).permute(0, 2, 1)
        return torch.cat((cls_token, tokens), dim=1)


class Attention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, feedforward_type="leff", act_last=False):
        super().__init__()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.feedforward_type = feedforward_type
        self.attn = Attention(dim, num_heads)
        hidden = int(dim * mlp_ratio)
        if feedforward_type == "leff":
            self.leff = LocallyEnhancedFeedForward(dim, hidden, act_last=act_last)
        else:
            self.feedforward = Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        if self.feedforward_type == "leff":
            x = x + self.leff(self.norm2(x))
            return x, x[:, 0]
        x = x + self.feedforward(self.norm2(x))
        return x[:, -1]


class CeIT(nn.Module):
    def __init__(self, backbone, img_size, patch_size, num_classes, embed_dim, depth, num_heads,
                 mlp_ratio, act_last):
        super().__init__()
        self.i2t = HybridEmbed(backbone, img_size, patch_size, 3, embed_dim)
        n = self.i2t.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dim))
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, act_last=act_last)
                                     for _ in range(depth)])
        self.lca = Block(embed_dim, num_heads, mlp_ratio, feedforward_type="lca")
        self.pos_layer_embed = nn.Parameter(torch.zeros(1, depth, embed_dim))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        B = x.shape[0]
        x = self.i2t(x)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1) + self.pos_embed
        cls_token_list = []
        for blk in self.blocks:
            x, c = blk(x)
            cls_token_list.append(c)
        all_cls = torch.stack(cls_token_list, dim=1) + self.pos_layer_embed
        return self.head(self.norm(self.lca(all_cls)).view(B, -1))


def randomize_(model, gen):
    """Weights ~ N(0, 1/fan_in), biases N(0, 0.1²), norm weights 1 + N(0, 0.1²),
    tokens/embeddings N(0, 0.5²)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            if name in ("cls_token", "pos_embed", "pos_layer_embed"):
                p.copy_(0.5 * r)
            elif p.ndim >= 2:
                p.copy_(r / np.sqrt(p[0].numel()))
            elif ("norm" in name or ".bn" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * r)
            else:
                p.copy_(0.1 * r)


def make(name, act_last):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2024)
    backbone = Image2Tokens(3, 8, kernel_size=3, stride=1)
    model = CeIT(backbone, img_size=32, patch_size=4, num_classes=10, embed_dim=32, depth=2,
                 num_heads=2, mlp_ratio=2.0, act_last=act_last)
    randomize_(model, gen)
    model.train()
    with torch.no_grad():
        for _ in range(2):  # non-trivial BN running statistics
            model(torch.randn((4, 3, 32, 32), generator=gen) * 1.5 + 0.3)
    x = torch.randn((4, 3, 32, 32), generator=gen)
    sd = {k: v.detach().clone().numpy() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        logits = model(x)
    train_model = copy.deepcopy(model).train()
    with torch.no_grad():
        logits_train = train_model(x)
    after = {f"after_train/{k}": v.detach().numpy() for k, v in train_model.state_dict().items()
             if "running" in k or "num_batches" in k}
    cfg = dict(num_classes=10, img_size=32, in_chans=3, i2t_chans=8, i2t_kernel=3,
               i2t_stride=1, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
               leff_variant="paper" if act_last else "official")
    out = {f"sd/{k}": v for k, v in sd.items()}
    out.update(after)
    out.update(x=x.numpy(), logits=logits.numpy(), logits_train=logits_train.numpy(),
               config=np.array(json.dumps(cfg)), versions=np.array(f"torch {torch.__version__}"))
    path = os.path.join(OUT, name)
    np.savez_compressed(path, **out)
    print(f"{path}: {len(sd)} keys, {os.path.getsize(path)} bytes, "
          f"logits std {logits.std():.3f}, train-mode logits std {logits_train.std():.3f}")


if __name__ == "__main__":
    make("ref_ceit.npz", act_last=False)
    make("ref_ceit_paper.npz", act_last=True)

"""MaxViT: "Multi-Axis Vision Transformer" (Tu et al., ECCV 2022), TF-compatible variant.

Each MaxViT block is MBConv (with squeeze-excitation) -> block (window) attention -> grid
attention, each attention with a learned relative position bias and a pre-norm MLP (paper
Sec. 3.2 and Fig. 2). Parameter names, shapes and forward math follow timm's ``maxxvit.py``
for ``maxvit_tiny_tf_224`` (BatchNorm eps 1e-3, LayerNorm eps 1e-5, tanh GELU, TF "same"
padding for strided convs, ``RelPosBiasTf``), so a timm state dict loads with ``strict=True``.

Reading order: helpers (convolutions, partitions), the MBConv block, relative position bias,
attention, the partition-attention block, the MaxViT block, stem, model, configurations.

    model = create_model("maxvit_cifar", num_classes=10)
    logits = model(minivit.randn(8, 3, 32, 32))          # (8, 10)
"""
from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import numpy as np

import minivit
from minivit import nn

from .classifier import ClassifierMixin
from .registry import check_hparams, register_model

__all__ = ["MaxViT", "MaxViTBlock", "MbConvBlock", "PartitionAttention", "RelPosBiasTf",
           "maxvit_tiny_tf_224", "maxvit_cifar"]


GELUTanh = partial(nn.GELU, approximate="tanh")    # the TF models' GELU


def create_conv2d(in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1,
                  bias: bool = True, channels_last: bool = False) -> nn.Conv2d:
    """'same' padding: symmetric k//2 for stride 1 (identical to TF), ``nn.Conv2dSame`` (TF's
    asymmetric 'SAME') if strided, as timm's ``create_conv2d`` for the tf models."""
    if stride == 1:
        return nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, groups=groups,
                         bias=bias, channels_last=channels_last)
    return nn.Conv2dSame(in_chs, out_chs, kernel_size, stride=stride, groups=groups, bias=bias,
                         channels_last=channels_last)


def window_partition(x, p: int):
    """(B, H, W, C) -> (B * H/p * W/p, p*p, C): contiguous p x p tiles (paper Fig. 3, "Block")."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, p * p, c)


def window_reverse(windows, p: int, h: int, w: int):
    c = windows.shape[-1]
    x = windows.reshape(-1, h // p, w // p, p, p, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def grid_partition(x, g: int):
    """(B, H, W, C) -> (B * H/g * W/g, g*g, C): each group gathers a g x g grid of pixels spaced
    H/g apart, a dilated global mixing (paper Fig. 3, "Grid")."""
    b, h, w, c = x.shape
    x = x.reshape(b, g, h // g, g, w // g, c).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, g * g, c)


def grid_reverse(windows, g: int, h: int, w: int):
    c = windows.shape[-1]
    x = windows.reshape(-1, h // g, w // g, g, g, c).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(-1, h, w, c)


class SqueezeExcite(nn.Module):
    """Squeeze-excitation (Hu et al. 2018): mean over space -> 1x1 conv -> SiLU -> 1x1 conv ->
    sigmoid gate on the channels. timm ``SEModule`` keys ``fc1``, ``fc2``; channels last."""

    def __init__(self, channels: int, rd_channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=True, channels_last=True)
        self.act = nn.SiLU()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=True, channels_last=True)
        self.gate = nn.Sigmoid()

    def forward(self, x):                                   # x: (B, H, W, C)
        s = x.mean(axis=(1, 2), keepdims=True)              # (B, 1, 1, C)
        s = self.fc2(self.act(self.fc1(s)))
        return x * self.gate(s)


class Downsample2d(nn.Module):
    """MBConv shortcut on stride 2: 2x2 average pool (TF 'SAME'), then a 1x1 conv (bias) only
    when the width changes (timm ``Downsample2d``, key ``shortcut.expand``); channels last."""

    def __init__(self, dim: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.expand = (nn.Conv2d(dim, dim_out, 1, bias=bias, channels_last=True)
                       if dim != dim_out else nn.Identity())

    def forward(self, x):  # x: (B, H, W, C); 2x2 windows of the 'SAME'-padded map
        ph, pw = nn.same_padding(x.shape[1], 2, 2), nn.same_padding(x.shape[2], 2, 2)
        if ph != (0, 0) or pw != (0, 0):
            x = minivit.pad(x, ((0, 0), ph, pw, (0, 0)))
        b, h, w, c = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
        return self.expand(x)


class MbConvBlock(nn.Module):
    """Pre-norm inverted bottleneck (paper Sec. 3.2 "MBConv"; Sandler et al. 2018):

        y = shortcut(x) + conv1x1( SE( act(BN( dwconv3x3_s( act(BN( conv1x1( BN(x) ))) ))) ))

    expansion 4 from the *output* width, squeeze width 0.25 * out, stride in the depthwise conv,
    shortcut = avg-pool (+1x1 conv if the width changes) when strided, identity otherwise.

    It runs on channels-last (B, H, W, C) maps, like the attention that follows: every conv
    and BatchNorm here is built with ``channels_last=True`` (the 1x1 convs are Linears on the
    rows, the depthwise conv runs on that layout, BN + GELU is one op), so the block needs no
    transposes. Weights keep timm's conv shapes, (out, in, 1, 1) and (C, 1, 3, 3).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, expand_ratio: float = 4.0,
                 se_ratio: float = 0.25, bn_eps: float = 1e-3, bn_momentum: float = 0.1,
                 drop_path: float = 0.0):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"MBConv stride must be 1 or 2, got {stride}")
        if stride == 1 and in_chs != out_chs:
            raise ValueError(f"a stride-1 MBConv needs equal widths (identity shortcut), got "
                             f"{in_chs} -> {out_chs}")
        mid = nn.make_divisible(out_chs * expand_ratio)
        norm_act = partial(nn.BatchNormAct2d, eps=bn_eps, momentum=bn_momentum,
                           act_layer=GELUTanh, channels_last=True)
        self.shortcut = Downsample2d(in_chs, out_chs) if stride == 2 else nn.Identity()
        self.pre_norm = norm_act(in_chs, apply_act=False)
        self.conv1_1x1 = nn.Conv2d(in_chs, mid, 1, bias=False, channels_last=True)
        self.norm1 = norm_act(mid)
        self.conv2_kxk = create_conv2d(mid, mid, 3, stride=stride, groups=mid, bias=False,
                                       channels_last=True)
        self.norm2 = norm_act(mid)
        self.se = SqueezeExcite(mid, int(se_ratio * out_chs))
        self.conv3_1x1 = nn.Conv2d(mid, out_chs, 1, bias=True, channels_last=True)
        self.drop_path = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):  # x: (B, H, W, C)
        shortcut = self.shortcut(x)
        x = self.pre_norm(x)
        x = self.conv1_1x1(x)
        x = self.norm1(x)
        x = self.conv2_kxk(x)                                   # depthwise 3x3, the stride
        x = self.norm2(x)
        x = self.se(x)
        # shortcut + DropPath(conv3_1x1(x)), the add inside the conv (nn.Conv2d)
        return self.conv3_1x1(x, residual=shortcut, drop_path=self.drop_path)


class RelPosBiasTf(nn.Module):
    """Learned relative position bias, one scalar per head and offset (paper Sec. 3.1, Eq. 1:
    ``softmax(QK^T / sqrt(d) + B)``), TF parameterisation (timm ``RelPosBiasTf``):

        bias[h, (qy, qx), (ky, kx)] = table[h, ky - qy + P - 1, kx - qx + P - 1]

    (key - query; table (heads, 2P-1, 2P-1)). The flat index is a non-persistent buffer.
    """

    def __init__(self, window_size: int, num_heads: int):
        super().__init__()
        p = window_size
        self.window_size, self.num_heads = p, num_heads
        self.relative_position_bias_table = nn.Parameter(
            np.zeros((num_heads, 2 * p - 1, 2 * p - 1), np.float32))
        nn.init.normal_(self.relative_position_bias_table, std=0.02)
        ys, xs = np.divmod(np.arange(p * p), p)
        dy = ys[None, :] - ys[:, None] + p - 1           # [query, key]
        dx = xs[None, :] - xs[:, None] + p - 1
        self.register_buffer("relative_position_index", (dy * (2 * p - 1) + dx).astype(np.int64),
                             persistent=False)

    def forward(self):
        """(heads, P*P, P*P) additive bias for the attention logits."""
        table = self.relative_position_bias_table.reshape(self.num_heads, -1)
        return table[:, self.relative_position_index.data]


class AttentionCl(nn.MultiheadSelfAttention):
    """Multi-head self-attention on channels-last tokens with a relative position bias (timm
    ``AttentionCl``, ``head_first=False``: ``qkv(x).reshape(B, N, 3, heads, 32)``): the
    ``nn.MultiheadSelfAttention`` of ViT (keys ``qkv``, ``proj``), heads of width 32, plus
    ``rel_pos``, whose bias is added to the scores before the softmax."""

    def __init__(self, dim: int, window_size: int, dim_head: int = 32, bias: bool = True):
        if dim % dim_head:
            raise ValueError(f"attention width {dim} is not divisible by the head width {dim_head}")
        super().__init__(dim, dim // dim_head, qkv_bias=bias)
        self.dim_head = dim_head
        self.rel_pos = RelPosBiasTf(window_size, self.num_heads)

    def forward(self, x):
        return super().forward(x, attn_bias=self.rel_pos())


class PartitionAttention(nn.Module):
    """Block or grid attention + MLP on an NHWC map, pre-norm (paper Sec. 3.2, Fig. 2):

        x = x + Attn(LN(x)) over the partitions;   x = x + MLP(LN(x))

    ``partition_type="block"`` uses contiguous P x P windows, ``"grid"`` a G x G dilated grid.
    timm ``PartitionAttentionCl`` (keys ``norm1``, ``attn``, ``norm2``, ``mlp``).
    """

    def __init__(self, dim: int, partition_type: str, partition_size: int, dim_head: int = 32,
                 mlp_ratio: float = 4.0, ln_eps: float = 1e-5, drop_path: float = 0.0):
        super().__init__()
        if partition_type not in ("block", "grid"):
            raise ValueError(f"partition_type must be 'block' or 'grid', got {partition_type!r}")
        self.partition_block = partition_type == "block"
        self.partition_size = partition_size
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = AttentionCl(dim, partition_size, dim_head)
        self.norm2 = nn.LayerNorm(dim, eps=ln_eps)
        self.mlp = nn.Mlp(dim, int(dim * mlp_ratio), act_layer=GELUTanh)
        self.drop_path = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _partition_attn(self, x):
        _, h, w, _ = x.shape
        p = self.partition_size
        if h % p or w % p:
            raise ValueError(f"a {h}x{w} feature map is not divisible by the "
                             f"{'window' if self.partition_block else 'grid'} size {p}")
        if self.partition_block:
            return window_reverse(self.attn(window_partition(x, p)), p, h, w)
        return grid_reverse(self.attn(grid_partition(x, p)), p, h, w)

    def forward(self, x):
        x = x + self.drop_path(self._partition_attn(self.norm1(x)))
        # x + DropPath(MLP(LN(x))), the add inside the MLP (nn.Mlp)
        x = self.mlp(self.norm2(x), residual=x, drop_path=self.drop_path)
        return x


class MaxViTBlock(nn.Module):
    """MBConv -> block attention -> grid attention (paper Fig. 2); timm ``MaxxVitBlock`` with
    children ``conv``, ``attn_block``, ``attn_grid``. One drop-path rate for all three."""

    def __init__(self, dim: int, dim_out: int, stride: int, window_size: int, grid_size: int,
                 dim_head: int = 32, bn_eps: float = 1e-3, bn_momentum: float = 0.1,
                 ln_eps: float = 1e-5, drop_path: float = 0.0):
        super().__init__()
        self.conv = MbConvBlock(dim, dim_out, stride, bn_eps=bn_eps, bn_momentum=bn_momentum,
                                drop_path=drop_path)
        self.attn_block = PartitionAttention(dim_out, "block", window_size, dim_head,
                                             ln_eps=ln_eps, drop_path=drop_path)
        self.attn_grid = PartitionAttention(dim_out, "grid", grid_size, dim_head,
                                            ln_eps=ln_eps, drop_path=drop_path)

    def forward(self, x):  # (B, H, W, C) in and out
        return self.attn_grid(self.attn_block(self.conv(x)))


class MaxViTStage(nn.Module):
    """A run of MaxViT blocks, the first one carrying the stride (key ``stages.i.blocks.j``)."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        return self.blocks(x)


class Stem(nn.Module):
    """conv3x3/2 -> BN -> GELU -> conv3x3 (no norm after the second conv), paper Sec. 3.3."""

    def __init__(self, in_chs: int, out_chs: int, bias: bool, bn_eps: float, bn_momentum: float):
        super().__init__()
        self.conv1 = create_conv2d(in_chs, out_chs, 3, stride=2, bias=bias)
        self.norm1 = nn.BatchNormAct2d(out_chs, bn_eps, bn_momentum, act_layer=GELUTanh)
        self.conv2 = create_conv2d(out_chs, out_chs, 3, stride=1, bias=bias)

    def forward(self, x):
        return self.conv2(self.norm1(self.conv1(x)))


class MaxViT(ClassifierMixin, nn.Module):
    """Stem -> stages of MaxViT blocks -> head (paper Fig. 2; timm ``MaxxVit``, tf configs).

    ``window_size`` (= ``grid_size`` unless given) defaults to ``img_size // 32`` like timm.
    Every stage's feature map must be divisible by both: checked at construction.
    """

    def __init__(self, num_classes: int = 1000, img_size: int = 224, in_chans: int = 3,
                 stem_width: int = 64, stem_bias: bool = True,
                 dims: Sequence[int] = (64, 128, 256, 512), depths: Sequence[int] = (2, 2, 5, 2),
                 strides: Sequence[int] | None = None, window_size: int | None = None,
                 grid_size: int | None = None, dim_head: int = 32,
                 head_hidden_size: int | None = 512, bn_eps: float = 1e-3, bn_momentum: float = 0.1,
                 ln_eps: float = 1e-5, drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        check_hparams(MaxViT, locals())  # sizes > 0, rates in [0, 1), flags bool
        super().__init__()
        strides = (2,) * len(dims) if strides is None else tuple(strides)
        if not (len(dims) == len(depths) == len(strides)):
            raise ValueError(f"dims, depths and strides need one entry per stage, got "
                             f"{len(dims)}, {len(depths)}, {len(strides)}")
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        window_size = window_size or self.img_size[0] // 32
        grid_size = grid_size or window_size
        if window_size < 1:
            raise ValueError(f"img_size {self.img_size} is too small for the default window "
                             f"size img_size // 32; pass window_size")
        self.window_size, self.grid_size = window_size, grid_size

        self.stem = Stem(in_chans, stem_width, stem_bias, bn_eps, bn_momentum)
        feat = tuple(math.ceil(s / 2) for s in self.img_size)
        total = sum(depths)
        dpr = np.linspace(0.0, drop_path_rate, total)      # per block, linear over the depth
        stages, prev, k = [], stem_width, 0
        for s, (dim, depth, stride) in enumerate(zip(dims, depths, strides)):
            feat = tuple(math.ceil(f / stride) for f in feat)
            for p, what in ((window_size, "window"), (grid_size, "grid")):
                if feat[0] % p or feat[1] % p:
                    raise ValueError(
                        f"img_size {self.img_size} gives a {feat[0]}x{feat[1]} map at stage {s}, "
                        f"not divisible by the {what} size {p}; use an input size whose stage "
                        f"maps are multiples of {p} (e.g. img_size = {p} * total stride)")
            blocks = []
            for i in range(depth):
                blocks.append(MaxViTBlock(prev, dim, stride if i == 0 else 1, window_size,
                                          grid_size, dim_head, bn_eps, bn_momentum, ln_eps,
                                          float(dpr[k])))
                prev, k = dim, k + 1
            stages.append(MaxViTStage(blocks))
        self.stages = nn.Sequential(*stages)
        self.feat_size = feat
        self.num_features = prev
        if head_hidden_size:
            self.head = nn.NormMlpClassifierHead(prev, num_classes, head_hidden_size, drop_rate,
                                                 norm_eps=ln_eps)
        else:
            self.norm = nn.LayerNorm(prev, eps=ln_eps)
            self.head = nn.ClassifierHead(prev, num_classes, drop_rate)
        self._init_weights()

    def _init_weights(self) -> None:
        """timm 'vit_eff': convs N(0, sqrt(2/fan_out)) (bias 0); attention and MLP Linear
        xavier-uniform (bias 0, MLP bias N(0, 1e-6)); bias tables N(0, 0.02); the head keeps the
        default Linear init."""
        for name, m in self.named_modules():
            if name.startswith("head"):
                continue
            if isinstance(m, nn.Conv2d):
                o, i, kh, kw = m.weight.shape
                groups = getattr(m, "groups", 1)
                fan_out = kh * kw * o // groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    if ".mlp." in f".{name}.":
                        nn.init.normal_(m.bias, std=1e-6)
                    else:
                        nn.init.zeros_(m.bias)

    def forward_features(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_chans or tuple(x.shape[2:]) != self.img_size:
            raise ValueError(f"{type(self).__name__} expects input of shape (B, {self.in_chans}, "
                             f"{self.img_size[0]}, {self.img_size[1]}), got {tuple(x.shape)}")
        x = self.stages(self.stem(x).permute(0, 2, 3, 1))   # the blocks run channels-last
        if not isinstance(self.head, nn.NormMlpClassifierHead):
            x = self.norm(x)
        return x.permute(0, 3, 1, 2)                        # NCHW features, as timm

    def forward(self, x):
        return self.head(self.forward_features(x))


# --- named configurations -------------------------------------------------------------------

def _build(cfg: dict, num_classes: int, overrides: dict) -> MaxViT:
    extra = {"drop_rate", "drop_path_rate", "grid_size", "dim_head", "bn_eps", "bn_momentum",
             "ln_eps"}
    unknown = set(overrides) - set(cfg) - extra
    if unknown:
        raise TypeError(f"unknown MaxViT config entries: {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(sorted(set(cfg) | extra))}")
    return MaxViT(num_classes=num_classes, **{**cfg, **overrides})


MAXVIT_TINY_TF_224 = dict(
    img_size=224, in_chans=3, stem_width=64, stem_bias=True, dims=(64, 128, 256, 512),
    depths=(2, 2, 5, 2), strides=(2, 2, 2, 2), window_size=7, head_hidden_size=512)

# docs/recipe.md: its 1,297,326 parameters are those of a timm twin with stem convs without bias
# and the plain "norm + fc" head (no tanh pre-logits layer).
MAXVIT_CIFAR = dict(
    img_size=32, in_chans=3, stem_width=64, stem_bias=False, dims=(64, 128), depths=(1, 2),
    strides=(1, 2), window_size=4, head_hidden_size=None)


@register_model
def maxvit_tiny_tf_224(num_classes: int = 1000, **overrides) -> MaxViT:
    """MaxViT-T (paper Table 1; timm maxvit_tiny_tf_224): dims (64, 128, 256, 512), depths
    (2, 2, 5, 2), window = grid = 7 at 224 (30,916,528 params at 1000 classes)."""
    return _build(MAXVIT_TINY_TF_224, num_classes, overrides)


@register_model
def maxvit_cifar(num_classes: int = 10, **overrides) -> MaxViT:
    """CIFAR MaxViT (docs/recipe.md): stem to 16x16, one 64-wide block at 16x16, two 128-wide
    blocks at 8x8 (first strided), window = grid = 4, head dim 32."""
    return _build(MAXVIT_CIFAR, num_classes, overrides)

"""BoTNet: "Bottleneck Transformers for Visual Recognition" (Srinivas et al., 2021).

A ResNet whose last bottleneck blocks replace the 3x3 convolution by global multi-head
self-attention (MHSA) with 2-D relative position logits (paper Fig. 4, Sec. 3 and Fig. 1).
Parameter names, shapes, initialisation and forward math follow timm's ``byobnet.py`` /
``bottleneck_attn.py`` (``botnet26t_256``), so a timm state dict loads with ``strict=True``.

Reading order: conv-BN-ReLU unit, stem, relative position logits, MHSA, the two residual
blocks, the model, then the named configurations. The stem runs on NCHW images; the stages run
on channels-last (B, H, W, C) maps: their convs and BatchNorms are built with
``channels_last=True`` (a 1x1 conv is then a plain GEMM on the rows, a 3x3 conv needs no
layout copies) and the MHSA reads its tokens directly. The weights keep timm's conv shapes.

    model = create_model("botnet_cifar", num_classes=10)
    logits = model(minivit.randn(8, 3, 32, 32))          # (8, 10)
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

import minivit
import minivit.nn.functional as F
from minivit import nn

from .classifier import ClassifierMixin
from .registry import check_hparams, register_model

__all__ = ["BoTNet", "BottleneckAttn", "PosEmbedRel", "botnet26t_256", "botnet_cifar"]


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class ConvNormAct(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU (optional): the ResNet unit, timm ``ConvNormAct``
    (keys ``conv``, ``bn``); BN and ReLU are one op (``nn.BatchNormAct2d``).

    Padding ``((stride - 1) + (kernel - 1)) // 2`` as timm (3 for 7x7/2, 1 for 3x3, 0 for 1x1).
    ``channels_last=True``: the unit takes and returns (N, H, W, C) maps (the stages run so).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1,
                 apply_act: bool = True, bn_eps: float = 1e-5, channels_last: bool = False):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        self.padding = ((stride - 1) + (kernel_size - 1)) // 2
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=self.padding,
                              bias=False, channels_last=channels_last)
        self.bn = nn.BatchNormAct2d(out_chs, eps=bn_eps, apply_act=apply_act,
                                    channels_last=channels_last)

    def out_size(self, size: int) -> int:
        return _conv_out(size, self.kernel_size, self.stride, self.padding)

    def forward(self, x, residual=None, act=None, drop_path=None):
        """bn(conv(x)); ``residual``, ``act`` and ``drop_path`` go to the BatchNorm:
        act(residual + drop_path(BN(conv(x)))), one op where it can (``nn.BatchNormAct2d``)."""
        return self.bn(self.conv(x), residual=residual, act=act, drop_path=drop_path)


class Stem(nn.Module):
    """Stride-2 convolutions (+ 3x3/2 max pool): ``tiered`` = 3x3 convs to (3c/8, c/2, c) as
    in timm's ResNet-T, ``7x7`` = the ResNet stem (paper Sec. 4: BoT50 keeps ResNet-50's stem).
    Children ``conv1..convN`` (+ ``pool``), as timm's byobnet ``Stem``; NCHW."""

    def __init__(self, in_chs: int, out_chs: Sequence[int], kernel_size: int, pool: bool):
        super().__init__()
        self.num_convs = len(out_chs)
        prev = in_chs
        for i, ch in enumerate(out_chs):
            # with no pool the last conv of a 2-conv+ stack carries the second stride (timm)
            stride = 2 if i == 0 or (not pool and i == len(out_chs) - 1 and i > 0) else 1
            setattr(self, f"conv{i + 1}", ConvNormAct(prev, ch, kernel_size, stride=stride))
            prev = ch
        self.pool = nn.MaxPool2d(3, stride=2, padding=1) if pool else nn.Identity()

    def out_size(self, size: int) -> int:
        for i in range(self.num_convs):
            size = getattr(self, f"conv{i + 1}").out_size(size)
        return _conv_out(size, 3, 2, 1) if isinstance(self.pool, nn.MaxPool2d) else size

    def forward(self, x):
        for i in range(self.num_convs):
            x = getattr(self, f"conv{i + 1}")(x)
        return self.pool(x)


def rel_logits_1d(q, rel):
    """Relative logits along the last spatial axis:

        out[n, y, i, j] = q[n, y, i] . rel[j - i + L - 1]

    q (N, Y, L, d), rel (2L - 1, d) -> (N, Y, L, L). One GEMM gives q . r for all 2L - 1
    offsets, then ``F.rel_to_abs`` picks offset ``j - i`` for each (query i, key j): the
    official ``rel_to_abs`` pad-and-reshape trick, written as the strided view it reads.
    """
    n, y, length, d = q.shape
    x = (q.reshape(n * y * length, d) @ rel.T).reshape(n, y, length, 2 * length - 1)
    return F.rel_to_abs(x)


class PosEmbedRel(nn.Module):
    """2-D relative position logits (paper Fig. 4 and Sec. 3; Bello et al. 2019, Eq. 4).

    For a query at (qy, qx) and a key at (ky, kx) the logit gains
    ``q . height_rel[ky - qy + H - 1] + q . width_rel[kx - qx + W - 1]``: content-dependent
    (q . r), one table per axis of width ``dim_head``, shared by all heads. Index
    ``key - query + L - 1`` as timm's ``rel_logits_1d``; the width term is broadcast over the
    key rows, the height term over the key columns.
    """

    def __init__(self, feat_size: tuple[int, int], dim_head: int, scale: float):
        super().__init__()
        self.height, self.width = feat_size
        self.dim_head = dim_head
        self.height_rel = nn.Parameter(np.zeros((2 * self.height - 1, dim_head), np.float32))
        self.width_rel = nn.Parameter(np.zeros((2 * self.width - 1, dim_head), np.float32))
        nn.init.trunc_normal_(self.height_rel, std=scale)
        nn.init.trunc_normal_(self.width_rel, std=scale)

    def forward(self, q):
        """q: (N, H*W, d) with positions row-major -> logits (N, H*W, H*W)."""
        n, hw, d = q.shape
        h, w = self.height, self.width
        q = q.reshape(n, h, w, d)
        lw = rel_logits_1d(q, self.width_rel)                              # (N, Hq, Wq, Wk)
        lh = rel_logits_1d(q.transpose(1, 2), self.height_rel).transpose(1, 2)  # (N, Hq, Wq, Hk)
        logits = lh.reshape(n, h, w, h, 1) + lw.reshape(n, h, w, 1, w)   # (N, Hq, Wq, Hk, Wk)
        return logits.reshape(n, hw, hw)


class BottleneckAttn(nn.Module):
    """Global MHSA over an H x W map with relative logits (paper Fig. 4), timm ``BottleneckAttn``.

    ``qkv`` is a 1x1 conv (no bias) whose output channels are ``[q | k | v]``, each head-major.
    ``softmax(q.k * d^-0.5 + q.r)`` (timm default; ``scale_pos_embed=True`` scales ``q.r`` too,
    as the official code). With ``stride=2`` attention runs at the input resolution and a
    2x2 average pool follows (paper Sec. 3: "we use 2x2 average pooling with stride 2").
    """

    def __init__(self, dim: int, dim_out: int, feat_size: tuple[int, int], stride: int = 1,
                 num_heads: int = 4, qk_ratio: float = 1.0, scale_pos_embed: bool = False):
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"attention width {dim_out} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.dim_head_qk = nn.make_divisible(dim_out * qk_ratio, divisor=8) // num_heads
        self.dim_head_v = dim_out // num_heads
        self.dim_out_qk = num_heads * self.dim_head_qk
        self.dim_out_v = num_heads * self.dim_head_v
        self.scale = self.dim_head_qk ** -0.5
        self.scale_pos_embed = scale_pos_embed
        self.stride = stride
        self.qkv = nn.Conv2d(dim, 2 * self.dim_out_qk + self.dim_out_v, 1, bias=False,
                             channels_last=True)
        nn.init.trunc_normal_(self.qkv.weight, std=dim ** -0.5)  # fan-in
        self.pos_embed = PosEmbedRel(feat_size, self.dim_head_qk, self.scale)

    def forward(self, x):
        """x: a channels-last (B, H, W, C) map, as the stages run; returns (B, H', W', C')."""
        b, h, w, c = x.shape
        if (h, w) != (self.pos_embed.height, self.pos_embed.width):
            raise ValueError(f"BottleneckAttn was built for a {self.pos_embed.height}x"
                             f"{self.pos_embed.width} feature map, got {h}x{w}")
        heads, dqk, dv = self.num_heads, self.dim_head_qk, self.dim_head_v
        qkv = self.qkv(x).reshape(b, h * w, -1)                           # the 1x1 conv
        q, k, v = minivit.split(qkv, [self.dim_out_qk, 2 * self.dim_out_qk], axis=2)
        q = q.reshape(b, h * w, heads, dqk).transpose(1, 2)                # (B, heads, HW, dqk)
        k = k.reshape(b, h * w, heads, dqk).transpose(1, 2)
        v = v.reshape(b, h * w, heads, dv).transpose(1, 2)
        rel = self.pos_embed(q.reshape(b * heads, h * w, dqk)).reshape(b, heads, h * w, h * w)
        if self.scale_pos_embed:
            rel = rel * self.scale
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=rel, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, h, w, self.dim_out_v)         # (B, H, W, heads*dv)
        if self.stride == 2:  # 2x2 average pool
            out = out.reshape(b, h // 2, 2, w // 2, 2, self.dim_out_v).mean(axis=(2, 4))
        return out


def _shortcut(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    """The residual path: identity, or a 1x1 conv + BN where the shape changes."""
    if in_chs != out_chs or stride != 1:
        return ConvNormAct(in_chs, out_chs, 1, stride=stride, apply_act=False, channels_last=True)
    return nn.Identity()


class _ResidualBlock(nn.Module):
    """What both residual blocks share: ``y = ReLU(shortcut(x) + DropPath(BN(conv3_1x1(
    body(x)))))``, with shortcut = 1x1 conv (stride) + BN when width or stride change, else
    identity. Each block builds ``shortcut`` and its ``body`` layers, then ``_end``."""

    def _end(self, mid: int, out_chs: int, drop_path: float) -> None:
        self.conv3_1x1 = ConvNormAct(mid, out_chs, 1, apply_act=False, channels_last=True)
        self.drop_path = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x):  # x: (B, H, W, C), channels last
        shortcut = self.shortcut(x)
        # ReLU(shortcut + DropPath(BN(conv3_1x1(body(x))))): conv3_1x1's BatchNorm adds and
        # activates (nn.BatchNormAct2d)
        return self.conv3_1x1(self.body(x), residual=shortcut, drop_path=self.drop_path,
                              act=self.act)


class BottleneckBlock(_ResidualBlock):
    """ResNet bottleneck (He et al. 2016, Fig. 5): 1x1 -> 3x3 (stride) -> 1x1, + shortcut, ReLU."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, bottle_ratio: float,
                 drop_path: float = 0.0, **_):
        super().__init__()
        mid = nn.make_divisible(out_chs * bottle_ratio)
        self.shortcut = _shortcut(in_chs, out_chs, stride)
        self.conv1_1x1 = ConvNormAct(in_chs, mid, 1, channels_last=True)
        self.conv2_kxk = ConvNormAct(mid, mid, 3, stride=stride, channels_last=True)
        self._end(mid, out_chs, drop_path)

    def body(self, x):
        return self.conv2_kxk(self.conv1_1x1(x))


class SelfAttnBlock(_ResidualBlock):
    """BoT block (paper Fig. 3 right): 1x1 -> MHSA (+ 2x2 avg pool if stride 2) -> BN, ReLU
    -> 1x1 -> BN, + shortcut, ReLU. timm ``SelfAttnBlock`` with ``post_attn`` BN+ReLU.

    ``feat_size`` is the map size the attention sees: the block's *input* size.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, bottle_ratio: float,
                 feat_size: tuple[int, int], num_heads: int = 4, scale_pos_embed: bool = False,
                 drop_path: float = 0.0):
        super().__init__()
        mid = nn.make_divisible(out_chs * bottle_ratio)
        self.shortcut = _shortcut(in_chs, out_chs, stride)
        self.conv1_1x1 = ConvNormAct(in_chs, mid, 1, channels_last=True)
        self.self_attn = BottleneckAttn(mid, mid, feat_size, stride=stride, num_heads=num_heads,
                                        scale_pos_embed=scale_pos_embed)
        self.post_attn = nn.BatchNormAct2d(mid, channels_last=True)
        self._end(mid, out_chs, drop_path)

    def body(self, x):
        return self.post_attn(self.self_attn(self.conv1_1x1(x)))


class BoTNet(ClassifierMixin, nn.Module):
    """ResNet backbone with BoT blocks: stem -> stages of bottleneck / self-attention blocks ->
    global average pool -> fc (paper Sec. 3-4; timm ``ByobNet`` for ``botnet26t``).

    ``block_types[s]`` is ``"bottle"``, ``"self_attn"`` or a per-block tuple of them. The
    model has a fixed input size (the relative tables are sized for it): a wrong size raises at
    construction (a stride-2 attention block on an odd map) or at the first forward.
    """

    def __init__(self, num_classes: int = 1000, img_size: int = 256, in_chans: int = 3,
                 stem_type: str = "tiered", stem_chs: int = 64, stem_pool: bool = True,
                 widths: Sequence[int] = (256, 512, 1024, 2048),
                 depths: Sequence[int] = (2, 2, 2, 2),
                 strides: Sequence[int] = (1, 2, 2, 2),
                 block_types: Sequence = ("bottle", "bottle", ("bottle", "self_attn"), "self_attn"),
                 bottle_ratio: float = 0.25, num_heads: int = 4, scale_pos_embed: bool = False,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, zero_init_last: bool = True):
        check_hparams(BoTNet, locals())  # sizes > 0, rates in [0, 1), flags bool
        super().__init__()
        if not (len(widths) == len(depths) == len(strides) == len(block_types)):
            raise ValueError("widths, depths, strides and block_types need one entry per stage, "
                             f"got {len(widths)}, {len(depths)}, {len(strides)}, "
                             f"{len(block_types)}")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)

        if stem_type == "tiered":
            stem_out = (3 * stem_chs // 8, stem_chs // 2, stem_chs)
            self.stem = Stem(in_chans, stem_out, 3, stem_pool)
        elif stem_type == "7x7":
            self.stem = (Stem(in_chans, (stem_chs,), 7, True) if stem_pool
                         else ConvNormAct(in_chans, stem_chs, 7, stride=2))
        else:
            raise ValueError(f"unknown stem_type {stem_type!r} (expected 'tiered' or '7x7')")
        feat = tuple(self.stem.out_size(s) for s in self.img_size)

        total = sum(depths)
        dpr = np.linspace(0.0, drop_path_rate, total)      # per block, linear over the depth
        stages, prev, k = [], stem_chs, 0
        for s, (width, depth, stride, types) in enumerate(
                zip(widths, depths, strides, block_types)):
            types = (types,) * depth if isinstance(types, str) else tuple(types)
            if len(types) != depth:
                raise ValueError(f"stage {s}: {len(types)} block types for depth {depth}")
            blocks = []
            for i, t in enumerate(types):
                block_stride = stride if i == 0 else 1
                if t == "self_attn":
                    if block_stride == 2 and any(f % 2 for f in feat):
                        raise ValueError(
                            f"img_size {self.img_size} gives a {feat[0]}x{feat[1]} map at "
                            f"stage {s}, which a stride-2 attention block cannot halve; use "
                            f"an input size divisible by the network stride")
                    blocks.append(SelfAttnBlock(prev, width, block_stride, bottle_ratio, feat,
                                                num_heads, scale_pos_embed, float(dpr[k])))
                elif t == "bottle":
                    blocks.append(BottleneckBlock(prev, width, block_stride, bottle_ratio,
                                                  drop_path=float(dpr[k])))
                else:
                    raise ValueError(f"unknown block type {t!r} (expected 'bottle' or 'self_attn')")
                feat = tuple(_conv_out(f, 3, block_stride, 1) for f in feat)
                prev, k = width, k + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.feat_size = feat
        self.num_features = prev
        self.head = nn.ClassifierHead(prev, num_classes, drop_rate)
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        """timm byobnet: conv N(0, sqrt(2/fan_out)), Linear N(0, 0.01), BN (1, 0), the last BN
        of each residual branch gamma = 0; attention qkv trunc-normal with std fan_in^-0.5."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.weight.shape
                fan_out = k[0] * k[2] * k[3]
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, BottleneckAttn):
                nn.init.trunc_normal_(m.qkv.weight, std=m.qkv.weight.shape[1] ** -0.5)
            if zero_init_last and isinstance(m, (BottleneckBlock, SelfAttnBlock)):
                nn.init.zeros_(m.conv3_1x1.bn.weight)

    def forward_features(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_chans or tuple(x.shape[2:]) != self.img_size:
            raise ValueError(f"{type(self).__name__} expects input of shape (B, {self.in_chans}, "
                             f"{self.img_size[0]}, {self.img_size[1]}), got {tuple(x.shape)}")
        x = self.stages(self.stem(x).permute(0, 2, 3, 1))   # the stages run channels-last
        return x.permute(0, 3, 1, 2)                        # NCHW features, as timm

    def forward(self, x):
        return self.head(self.forward_features(x))


# --- named configurations -------------------------------------------------------------------

def _build(cfg: dict, num_classes: int, overrides: dict) -> BoTNet:
    unknown = set(overrides) - set(cfg) - {"drop_rate", "drop_path_rate", "zero_init_last",
                                           "scale_pos_embed"}
    if unknown:
        raise TypeError(f"unknown BoTNet config entries: {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(sorted(cfg))}")
    return BoTNet(num_classes=num_classes, **{**cfg, **overrides})


BOTNET26T_256 = dict(
    img_size=256, in_chans=3, stem_type="tiered", stem_chs=64, stem_pool=True,
    widths=(256, 512, 1024, 2048), depths=(2, 2, 2, 2), strides=(1, 2, 2, 2),
    block_types=("bottle", "bottle", ("bottle", "self_attn"), "self_attn"),
    bottle_ratio=0.25, num_heads=4)

BOTNET_CIFAR = dict(
    img_size=32, in_chans=3, stem_type="7x7", stem_chs=64, stem_pool=False,
    widths=(128, 256, 512), depths=(2, 2, 2), strides=(1, 2, 1),
    block_types=("bottle", "bottle", "self_attn"), bottle_ratio=0.25, num_heads=4)


@register_model
def botnet26t_256(num_classes: int = 1000, **overrides) -> BoTNet:
    """timm's botnet26t_256: tiered stem, bottlenecks (2, 2, 2, 2) with widths 256..2048; an
    MHSA block at the end of stage 3 and both blocks of stage 4 (12,488,672 params at 1000)."""
    return _build(BOTNET26T_256, num_classes, overrides)


@register_model
def botnet_cifar(num_classes: int = 10, **overrides) -> BoTNet:
    """CIFAR BoTNet (docs/recipe.md): 7x7/2 stem to 16x16, widths (128, 256, 512), depths 2,
    strides (1, 2, 1); the last stage is two 4-head MHSA blocks at 8x8."""
    return _build(BOTNET_CIFAR, num_classes, overrides)

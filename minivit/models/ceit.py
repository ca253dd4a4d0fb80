"""CeiT — "Incorporating Convolution Designs into Visual Transformers" (Yuan et al., ICCV 2021,
arXiv 2103.11816).

Read top to bottom: the blocks (Image-to-Tokens, LeFF, encoder block, class-token attention
and the LCA block), then the model, then the named configurations. CeiT is not in timm; the
parameter names follow the official code (coeusguo/ceit ``ceit_model.py``, itself built on
timm 0.3 / DeiT), so an official ``state_dict`` converted to NumPy loads strictly::

    cls_token (1, 1, D)   pos_embed (1, N + 1, D)   pos_layer_embed (1, depth, D)
    i2t.backbone.conv.weight (c, in_chans, k, k)    i2t.backbone.bn.*   (BatchNorm, 5 keys)
    i2t.proj.{weight (D, c, P, P), bias}
    blocks.{i}.norm1.*  blocks.{i}.attn.qkv.*  blocks.{i}.attn.proj.*  blocks.{i}.norm2.*
    blocks.{i}.leff.conv1.{weight (hD, D, 1, 1), bias}   blocks.{i}.leff.bn1.*
    blocks.{i}.leff.conv2.{weight (hD, 1, k, k), bias}   blocks.{i}.leff.bn2.*   (depthwise)
    blocks.{i}.leff.conv3.{weight (D, hD, 1, 1), bias}   blocks.{i}.leff.bn3.*
    lca.norm1.*  lca.attn.qkv.*  lca.attn.proj.*  lca.norm2.*  lca.feedforward.fc1.*  .fc2.*
    norm.*  head.*

The three changes to ViT/DeiT, all in Sec. 3 of the paper ("Image-to-Tokens",
"Locally-Enhanced Feed-Forward Network", "Layer-wise Class-Token Attention"):

    x'  = I2T(x) = MaxPool(BN(Conv(x)))                 no activation, then P×P patches
    LeFF: tokens -> Linear -> BN -> GELU -> 2-D -> DWConv -> BN -> GELU -> flatten
                 -> Linear -> BN -> GELU; the class token passes around it untouched
    LCA: attention from the last layer's class token over the class tokens of all layers

Paper versus official code: the paper puts GELU after all three BatchNorms of the LeFF, the
official code omits the last one. Parameters are identical; ``leff_variant="paper"`` (the
default of every configuration here) or ``"official"`` selects the behaviour.
"""
from __future__ import annotations

import minivit
from minivit import nn
from minivit.nn import functional as F
from minivit.nn.helpers import check_input, to_2tuple

from .classifier import ClassifierMixin
from .registry import check_hparams, register_model

__all__ = ["Image2Tokens", "I2TEmbed", "LeFF", "Block", "ClassTokenAttention", "LCABlock",
           "CeIT", "ceit_tiny_patch16_224", "ceit_cifar"]

LN_EPS = 1e-6  # the official code's LayerNorm eps (DeiT's)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------

class Image2Tokens(nn.Module):
    """The I2T stem (Sec. 3, "Image-to-Tokens"): x' = MaxPool(BN(Conv(x))).

    Conv k×k (stride s, padding k//2, no bias) → BatchNorm2d → MaxPool 3×3 stride 2 padding 1,
    with no activation anywhere (CeiT-T: 7×7/2, 64 channels, 224 → 112 → 56).
    """

    def __init__(self, in_chans=3, out_chans=64, kernel_size=7, stride=2):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size=kernel_size, stride=stride,
                              padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def output_size(self, size: int) -> int:
        """Side length after the conv and the max pool for an input side ``size``."""
        k, s = self.kernel_size, self.stride
        size = (size + 2 * (k // 2) - k) // s + 1
        return (size + 2 - 3) // 2 + 1

    def forward(self, x):
        return self.maxpool(self.bn(self.conv(x)))


class I2TEmbed(nn.PatchEmbed):
    """``i2t``: the I2T ``backbone`` followed by the patch projection ``proj`` (a P×P
    convolution with stride P on the low-level feature map), giving (B, N, D) tokens.
    CeiT-T: 56×56 feature map, P = 4 → 14×14 = 196 tokens (the "patch16" in the official
    names is the effective patch on the image: 2·2·4)."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=192, i2t_chans=64,
                 i2t_kernel=7, i2t_stride=2):
        backbone = Image2Tokens(in_chans, i2t_chans, i2t_kernel, i2t_stride)
        H, W = to_2tuple(img_size)
        feat = (backbone.output_size(H), backbone.output_size(W))
        ph, pw = to_2tuple(patch_size)
        if feat[0] % ph or feat[1] % pw:
            raise ValueError(
                f"CeiT: the I2T feature map of a {H}x{W} input is {feat[0]}x{feat[1]}, "
                f"which is not divisible by patch_size {(ph, pw)}")
        super().__init__(feat, patch_size, i2t_chans, embed_dim)
        self.backbone = backbone

    def forward(self, x):
        return super().forward(self.backbone(x))


class LeFF(nn.Module):
    """Locally-enhanced Feed-Forward (Sec. 3, "Locally-Enhanced Feed-Forward Network").

    The class token is split off and returned unchanged; the N patch tokens go through::

        x1 = GELU(BN1(Linear1(x_p)))                 D → hidden   ('conv1', 1×1)
        x2 = GELU(BN2(DWConv(restore_2d(x1))))       depthwise k×k on the (h, w) grid ('conv2')
        x3 = GELU(BN3(Linear2(flatten(x2))))         hidden → D   ('conv3', 1×1)

    (``variant="official"`` drops the last GELU; ``with_bn=False`` drops the three BNs, as
    ``leff_with_bn`` in the official code.) Because the block adds LeFF(LN2(x)) to x, the class
    row of the residual becomes x_cls + LN2(x)_cls — a quirk of the official code, reproduced.

    The paper's linear projections are stored as 1×1 convolutions, weight (C_out, C_in, 1, 1),
    as in the official code. The map stays channels-last, (B, h, w, C), from conv1 to conv3:
    the convolutions run on that layout (``channels_last=True``: a 1×1 conv is a Linear on the
    rows, the depthwise one needs no transpose), and BatchNorm takes the same per-channel
    statistics over all B·h·w positions in either layout (``BatchNormAct``: BN and GELU in
    one op). The restore-to-2-D and the flatten are then free reshapes.
    """

    def __init__(self, dim, hidden, grid_size, kernel_size=3, with_bn=True, variant="paper"):
        super().__init__()
        if variant not in ("paper", "official"):
            raise ValueError(f"leff_variant must be 'paper' or 'official', got {variant!r}")
        self.grid_size, self.hidden = grid_size, hidden
        self.act_last = variant == "paper"
        self.with_bn = with_bn
        self.conv1 = nn.Conv2d(dim, hidden, 1, channels_last=True)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel_size=kernel_size, stride=1,
                               padding=(kernel_size - 1) // 2, groups=hidden, channels_last=True)
        self.conv3 = nn.Conv2d(hidden, dim, 1, channels_last=True)
        if with_bn:   # GELU(BN(.)), each one fused op; the keys are the official BatchNorms'
            self.bn1 = nn.BatchNormAct1d(hidden, act_layer=nn.GELU, channels_last=True)
            self.bn2 = nn.BatchNormAct2d(hidden, act_layer=nn.GELU, channels_last=True)
            self.bn3 = nn.BatchNormAct1d(dim, act_layer=nn.GELU, apply_act=self.act_last,
                                         channels_last=True)
        else:
            self.act1, self.act2 = nn.GELU(), nn.GELU()
            self.act3 = nn.GELU() if self.act_last else nn.Identity()

    def forward(self, x):
        B, N, C = x.shape
        h, w = self.grid_size
        if N - 1 != h * w:
            raise ValueError(f"LeFF expects 1 + {h}*{w} tokens, got {N}")
        cls_token, t = x[:, :1], x[:, 1:]
        t = t.reshape(B, h, w, C)                               # the (h, w) grid, channels last
        t = self.conv1(t)
        t = self.bn1(t) if self.with_bn else self.act1(t)
        t = self.conv2(t)                                       # depthwise k×k
        t = self.bn2(t) if self.with_bn else self.act2(t)
        t = self.conv3(t)
        t = self.bn3(t) if self.with_bn else self.act3(t)
        t = t.reshape(B, h * w, C)                              # flatten
        return minivit.cat([cls_token, t], axis=1)


class Block(nn.Module):
    """CeiT encoder block: the pre-norm ViT block with the MLP replaced by LeFF.

        x = x + DropPath(MSA(LN1(x)))
        x = x + DropPath(LeFF(LN2(x)))
    """

    def __init__(self, dim, num_heads, grid_size, mlp_ratio=4.0, qkv_bias=True, drop=0.0,
                 attn_drop=0.0, drop_path=0.0, kernel_size=3, with_bn=True, leff_variant="paper"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = nn.MultiheadSelfAttention(dim, num_heads, qkv_bias=qkv_bias,
                                              attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.leff = LeFF(dim, int(dim * mlp_ratio), grid_size, kernel_size, with_bn,
                         leff_variant)
        self.drop_path = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.leff(self.norm2(x)))
        return x


class ClassTokenAttention(nn.Module):
    """Multi-head attention in which only the last token queries (the official
    ``AttentionLCA``): ``qkv`` maps all L class tokens, the query of the last one attends over
    the keys and values of all of them; output (B, 1, D) after ``proj``."""

    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):                                                 # x: (B, L, D)
        B, L, D = x.shape
        H, d = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(B, L, 3, H, d).permute(2, 0, 3, 1, 4)   # (3, B, H, L, d)
        q, k, v = qkv[0][:, :, L - 1:], qkv[1], qkv[2]                    # q: the last token
        # softmax(q k^T * scale) v, attention probabilities (B, H, 1, L) dropped out by attn_drop
        p = self.attn_drop.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)
        out = out.transpose(1, 2).reshape(B, 1, D)
        return self.proj_drop(self.proj(out))


class LCABlock(nn.Module):
    """Layer-wise Class-token Attention (Sec. 3, "Layer-wise Class-Token Attention").

    Input: the class tokens collected after each of the L encoder blocks, stacked, plus the
    learned layer-position embedding, S (B, L, D). Only the last one attends::

        u = S_L + MSA_last(LN1(S))      query from LN1(S)_L, keys/values from all of LN1(S)
        u = u + FFN(LN2(u))             plain MLP (fc1, GELU, fc2), not LeFF; no drop path

    Output (B, 1, D). (The official ``Block(feedforward_type='lca')`` runs full attention
    over the L tokens and keeps the last row; every other row is discarded, so the numbers
    are the same.)
    """

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop=0.0, attn_drop=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = ClassTokenAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.feedforward = nn.Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, s):
        L = s.shape[1]
        u = s[:, L - 1:] + self.attn(self.norm1(s))
        return u + self.feedforward(self.norm2(u))


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

class CeIT(ClassifierMixin, nn.Module):
    """CeiT classifier: I2T tokens + class token + position embedding → ``depth`` LeFF blocks,
    collecting the class token after each → LCA over them → LayerNorm → head.

    Args:
        img_size, in_chans: input geometry (the forward checks the input against it).
        i2t_chans, i2t_kernel, i2t_stride: the I2T convolution (CeiT-T: 64, 7, 2).
        patch_size: the projection patch on the I2T feature map (CeiT-T: 4); the feature map
            side must be divisible by it (checked here).
        num_classes: head width; 0 gives no head.
        embed_dim, depth, num_heads, mlp_ratio (LeFF and LCA-MLP hidden ratio), qkv_bias.
        leff_kernel: depthwise kernel of the LeFF (3); leff_with_bn: the three LeFF BNs;
        leff_variant: "paper" (GELU after the last LeFF BN too) or "official" (no last GELU).
        drop_rate: dropout after the position embedding, the attention projections and in the
            LCA MLP (the official semantics); attn_drop_rate: on attention probabilities;
        drop_path_rate: stochastic depth, linear from 0 over the encoder blocks (none in LCA).
    Initialisation (official): Linear trunc-normal std .02 / bias 0 (head included),
    LayerNorm (1, 0), pos_embed and cls_token trunc-normal .02, pos_layer_embed zeros,
    convolutions and BatchNorms PyTorch's defaults.

    Note (true of the official code too): only class tokens leave the encoder, and the LeFF
    passes the class token through, so the last block's LeFF never reaches the logits — its
    parameters get exactly zero gradient (its BatchNorm running statistics still update).
    """

    def __init__(self, img_size=224, in_chans=3, num_classes=1000, i2t_chans=64, i2t_kernel=7,
                 i2t_stride=2, patch_size=4, embed_dim=192, depth=12, num_heads=3,
                 mlp_ratio=4.0, qkv_bias=True, leff_kernel=3, leff_with_bn=True,
                 leff_variant="paper", drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0):
        check_hparams(CeIT, locals())  # sizes > 0, rates in [0, 1), flags bool
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.img_size, self.in_chans = to_2tuple(img_size), in_chans
        self.leff_variant = leff_variant

        self.i2t = I2TEmbed(img_size, patch_size, in_chans, embed_dim, i2t_chans, i2t_kernel,
                            i2t_stride)
        num_patches = self.i2t.num_patches
        self.cls_token = nn.Parameter(minivit.zeros((1, 1, embed_dim)))
        self.pos_embed = nn.Parameter(minivit.zeros((1, num_patches + 1, embed_dim)))
        self.pos_drop = nn.Dropout(drop_rate)

        dpr = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, self.i2t.grid_size, mlp_ratio, qkv_bias, drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=dpr[i], kernel_size=leff_kernel,
                  with_bn=leff_with_bn, leff_variant=leff_variant)
            for i in range(depth)])
        self.lca = LCABlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop=drop_rate,
                            attn_drop=attn_drop_rate)
        self.pos_layer_embed = nn.Parameter(minivit.zeros((1, depth, embed_dim)))
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for _, m in self.named_modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x):
        check_input("CeiT", x, self.in_chans, self.img_size)
        B = x.shape[0]
        x = self.i2t(x)                                                   # (B, N, D)
        cls = self.cls_token.expand(B, 1, self.embed_dim)
        x = self.pos_drop(minivit.cat([cls, x], axis=1) + self.pos_embed)
        cls_tokens = []
        for blk in self.blocks:
            x = blk(x)
            cls_tokens.append(x[:, 0])                                    # after every block
        s = minivit.stack(cls_tokens, axis=1) + self.pos_layer_embed      # (B, depth, D)
        u = self.lca(s)                                                   # (B, 1, D)
        return self.norm(u)[:, 0]

    def forward_head(self, x, pre_logits: bool = False):
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------------------------
# Named configurations
# --------------------------------------------------------------------------------------------

_ARGS = ("img_size", "in_chans", "i2t_chans", "i2t_kernel", "i2t_stride", "patch_size",
         "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "leff_kernel",
         "leff_with_bn", "leff_variant", "drop_rate", "attn_drop_rate", "drop_path_rate")


def _create(defaults: dict, num_classes: int, overrides: dict) -> CeIT:
    unknown = set(overrides) - set(_ARGS)
    if unknown:
        raise TypeError(f"unknown CeiT config entries: {sorted(unknown)}; known: {_ARGS}")
    return CeIT(num_classes=num_classes, **{**defaults, **overrides})


@register_model
def ceit_tiny_patch16_224(num_classes=1000, **overrides) -> CeIT:
    """CeiT-T: I2T 7×7/2 conv (64 ch) + BN + max pool, 4×4 projection (14×14 tokens), D192,
    12 blocks, 3 heads, LeFF ratio 4 with 3×3 depthwise, LCA — 6,356,904 parameters.
    LeFF variant: paper (GELU after all three BNs)."""
    cfg = dict(img_size=224, i2t_chans=64, i2t_kernel=7, i2t_stride=2, patch_size=4,
               embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0)
    return _create(cfg, num_classes, overrides)


@register_model
def ceit_cifar(num_classes=10, **overrides) -> CeIT:
    """CIFAR CeiT (docs/recipe.md): I2T 3×3 conv stride 1 (3→32, no bias) + BN + 3×3/2 max pool
    (16×16), 2×2 projection to D192 (64 tokens + class token), depth 6, 3 heads, LeFF hidden
    384 (ratio 2) with 3×3 depthwise, LCA over the 6 class tokens with MLP ratio 2 —
    2,155,562 parameters with 10 classes. LeFF variant: paper."""
    cfg = dict(img_size=32, i2t_chans=32, i2t_kernel=3, i2t_stride=1, patch_size=2,
               embed_dim=192, depth=6, num_heads=3, mlp_ratio=2.0)
    return _create(cfg, num_classes, overrides)

"""ViT — "An Image is Worth 16x16 Words" (Dosovitskiy et al., ICLR 2021, arXiv 2010.11929).

Read top to bottom: the blocks (patch embedding, MLP, encoder block), then the model, then
the named configurations. Parameter names, shapes and initialisation follow timm's
``timm/models/vision_transformer.py`` so that a timm ``state_dict`` converted to NumPy loads
with ``load_state_dict(strict=True)``::

    cls_token (1, 1, D)                 pos_embed (1, N + 1, D)
    patch_embed.proj.{weight (D, C, P, P), bias}
    blocks.{i}.norm1.{weight, bias}     blocks.{i}.attn.qkv.{weight (3D, D), bias}
    blocks.{i}.attn.proj.{weight, bias} blocks.{i}.norm2.{weight, bias}
    blocks.{i}.mlp.fc1.{weight (hD, D), bias}   blocks.{i}.mlp.fc2.{weight (D, hD), bias}
    norm.{weight, bias}  (fc_norm.* instead with global_pool="avg")   head.{weight, bias}

The four equations of the paper (§3.1) map onto the code as::

    z_0  = [x_class; x_p^1 E; ...; x_p^N E] + E_pos        (1)  PatchEmbed, cls_token, pos_embed
    z'_l = MSA(LN(z_{l-1})) + z_{l-1}                      (2)  Block, first residual
    z_l  = MLP(LN(z'_l)) + z'_l                            (3)  Block, second residual
    y    = LN(z_L^0)                                       (4)  norm, then head on the class token
"""
from __future__ import annotations

import minivit
from minivit import nn
from minivit.nn.helpers import check_input

from .classifier import ClassifierMixin
from .registry import check_hparams, register_model

__all__ = ["Block", "VisionTransformer", "vit_tiny_patch16_224", "vit_cifar"]

LN_EPS = 1e-6  # timm's ViT LayerNorm eps (PyTorch's default 1e-5 would be a silent mismatch)


# --------------------------------------------------------------------------------------------
# Blocks (the patch embedding and the MLP are nn.PatchEmbed and nn.Mlp)
# --------------------------------------------------------------------------------------------

class Block(nn.Module):
    """One pre-norm encoder layer, Eqs. (2) and (3) (§3.1 and Appendix A):

        x = x + DropPath(MSA(LN1(x)))
        x = x + DropPath(MLP(LN2(x)))

    MSA is timm's ``Attention`` layout: ``qkv`` Linear(D, 3D) with rows [q | k | v], each
    head-major, scale head_dim^-0.5, then ``proj``. The MLP (§3.1: "two layers with a GELU
    non-linearity") is fc1 (D -> hidden), exact GELU, fc2 (hidden -> D). DropPath (stochastic
    depth) drops the residual branch per sample in training and is the identity in eval.
    """

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, proj_drop=0.0,
                 attn_drop=0.0, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = nn.MultiheadSelfAttention(dim, num_heads, qkv_bias=qkv_bias,
                                              attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path1 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = nn.Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.drop_path2 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path1(self.attn(self.norm1(x)))                  # Eq. (2)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))                   # Eq. (3)
        return x


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

class VisionTransformer(ClassifierMixin, nn.Module):
    """ViT classifier (§3.1, Fig. 1), timm semantics.

    Args:
        img_size, patch_size, in_chans: input geometry; img_size must be divisible by
            patch_size (checked here), and the forward checks the input against it.
        num_classes: head width; 0 gives no head (``forward`` returns the pooled features).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer size.
        global_pool: ``"token"`` (head on the class token after the final LayerNorm, the
            paper's Eq. 4) or ``"avg"`` (mean over the patch tokens, excluding the class
            token, followed by ``fc_norm``; ``norm`` is then the identity, as in timm).
        drop_rate: dropout before the head (timm's ``head_drop``).
        pos_drop_rate: dropout after adding the position embedding.
        proj_drop_rate: dropout after the attention projection and inside the MLP.
        attn_drop_rate: dropout on the attention probabilities.
        drop_path_rate: stochastic depth, linear from 0 to this value over the blocks.
        zero_head: initialise the head weight and bias to zero (the JAX ViT's choice; off by
            default, as timm's default init, which trains faster from scratch on CIFAR); the
            other weights follow timm: Linear trunc-normal std .02 / bias 0, pos_embed
            trunc-normal .02, cls_token normal std 1e-6, LayerNorm (1, 0), patch convolution
            PyTorch's default.
    """

    global_pool_choices = ("token", "avg")   # what reset_classifier(n, global_pool) accepts

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000,
                 embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True,
                 global_pool="token", drop_rate=0.0, pos_drop_rate=0.0, proj_drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.0, zero_head=False):
        check_hparams(VisionTransformer, locals())  # sizes > 0, rates in [0, 1), flags bool
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = self.num_features = embed_dim
        self.num_prefix_tokens = 1

        self.patch_embed = nn.PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.img_size, self.in_chans = self.patch_embed.img_size, in_chans
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(minivit.zeros((1, 1, embed_dim)))
        self.pos_embed = nn.Parameter(minivit.zeros((1, num_patches + 1, embed_dim)))
        self.pos_drop = nn.Dropout(pos_drop_rate)

        dpr = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                  attn_drop=attn_drop_rate, drop_path=dpr[i])
            for i in range(depth)])
        use_fc_norm = global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=LN_EPS) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(zero_head)

    def _init_weights(self, zero_head: bool) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if name == "head" and zero_head:
                    nn.init.zeros_(m.weight)
                else:
                    nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x):
        check_input("ViT", x, self.in_chans, self.img_size)
        B = x.shape[0]
        x = self.patch_embed(x)                                   # (B, N, D)
        cls = self.cls_token.expand(B, 1, self.embed_dim)
        x = minivit.cat([cls, x], axis=1) + self.pos_embed        # Eq. (1)
        x = self.pos_drop(x)
        x = self.blocks(x)                                        # Eqs. (2), (3)
        return self.norm(x)

    def forward_head(self, x, pre_logits: bool = False):
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(axis=1)
        else:
            x = x[:, 0]                                           # Eq. (4): z_L^0
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------------------------
# Named configurations
# --------------------------------------------------------------------------------------------

def _create(defaults: dict, num_classes: int, overrides: dict) -> VisionTransformer:
    unknown = set(overrides) - set(_ARGS)
    if unknown:
        raise TypeError(f"unknown ViT config entries: {sorted(unknown)}; known: {_ARGS}")
    return VisionTransformer(num_classes=num_classes, **{**defaults, **overrides})


_ARGS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio",
         "qkv_bias", "global_pool", "drop_rate", "pos_drop_rate", "proj_drop_rate",
         "attn_drop_rate", "drop_path_rate", "zero_head")


@register_model
def vit_tiny_patch16_224(num_classes=1000, **overrides) -> VisionTransformer:
    """ViT-Ti/16 (= DeiT-Ti): P16, D192, 12 layers, 3 heads, MLP 768 — 5,717,416 parameters."""
    cfg = dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0)
    return _create(cfg, num_classes, overrides)


@register_model
def vit_cifar(num_classes=10, **overrides) -> VisionTransformer:
    """CIFAR ViT (docs/recipe.md): 32×32 input, 4×4 patches (64 + class token), D192, depth 6,
    3 heads, MLP ratio 2, head on the class token — 1,806,538 parameters with 10 classes."""
    cfg = dict(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3, mlp_ratio=2.0)
    return _create(cfg, num_classes, overrides)

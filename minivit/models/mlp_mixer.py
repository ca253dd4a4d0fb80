"""MLP-Mixer — "MLP-Mixer: An all-MLP Architecture for Vision" (Tolstikhin et al., NeurIPS 2021,
arXiv 2105.01601).

Read top to bottom: the mixer block, then the model, then the named configurations.
Parameter names and initialisation follow timm's ``timm/models/mlp_mixer.py``::

    stem.proj.{weight (C, in_chans, P, P), bias}
    blocks.{i}.norm1.{weight, bias}
    blocks.{i}.mlp_tokens.fc1.{weight (DS, S), bias}    blocks.{i}.mlp_tokens.fc2.{weight (S, DS), bias}
    blocks.{i}.norm2.{weight, bias}
    blocks.{i}.mlp_channels.fc1.{weight (DC, C), bias}  blocks.{i}.mlp_channels.fc2.{weight (C, DC), bias}
    norm.{weight, bias}    head.{weight, bias}

S is the number of patches, C the hidden width, DS = 0.5·C the token-mixing and DC = 4·C the
channel-mixing hidden width (paper Table 1; lucidrains' mlp-mixer-pytorch swaps the two).
There is no position embedding and no class token: the token-mixing MLP is tied to S, so the
model is tied to one input resolution.
"""
from __future__ import annotations

import math

from minivit import nn
from minivit.nn.helpers import check_input

from .classifier import ClassifierMixin
from .registry import check_hparams, register_model

LN_EPS = 1e-6  # timm's Mixer LayerNorm eps

__all__ = ["MixerBlock", "MlpMixer", "mixer_b16_224", "mlp_mixer_cifar"]


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------

class MixerBlock(nn.Module):
    """One Mixer layer, paper §2, Eq. (1):

        U = X + W2 σ(W1 LN(X))ᵀ        token mixing: an MLP over the S patches, shared by channels
        Y = U + W4 σ(W3 LN(U))         channel mixing: an MLP over the C channels, shared by patches

    ``mlp_tokens`` (S → DS → S) mixes along the patch axis, ``mlp_channels`` (C → DC → C)
    along the channel axis; both are Linear · exact GELU · Linear (``nn.Mlp``). Pre-LayerNorm
    with eps 1e-6. Stochastic depth drops each residual branch per sample; timm uses the same
    rate for every block (not a linear ramp), and so does this file.

    Layout: the block takes and returns X **tokens first**, (S, B, C). Then neither MLP needs
    a transpose: the token MLP's Linears are ``nn.LinearColumns``, which map the first axis
    (one GEMM W (out, S) @ (S, B·C) on a free reshape), the channel MLP and the LayerNorms
    work on the last axis as usual. (Mixer layers written on (B, S, C), as in timm, transpose
    twice per block.) Stochastic depth draws per sample along axis 1 (``batch_dim=1``).
    """

    def __init__(self, dim, seq_len, mlp_ratio=(0.5, 4.0), drop=0.0, drop_path=0.0):
        super().__init__()
        tokens_dim, channels_dim = (int(r * dim) for r in mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp_tokens = nn.Mlp(seq_len, tokens_dim, act_layer=nn.GELU, drop=drop,
                                 linear_layer=nn.LinearColumns)
        self.drop_path = nn.DropPath(drop_path, batch_dim=1) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp_channels = nn.Mlp(dim, channels_dim, act_layer=nn.GELU, drop=drop)

    def forward(self, x):                                              # x: (S, B, C)
        # x + DropPath(MLP(LN(x))), twice; each MLP adds its residual itself (nn.Mlp)
        x = self.mlp_tokens(self.norm1(x), residual=x, drop_path=self.drop_path)     # along S
        x = self.mlp_channels(self.norm2(x), residual=x, drop_path=self.drop_path)   # along C
        return x


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

class MlpMixer(ClassifierMixin, nn.Module):
    """MLP-Mixer classifier (§2, Fig. 1): per-patch linear embedding (``stem``, a P×P
    convolution with stride P), ``depth`` mixer blocks, LayerNorm, global average pooling over
    the patches, linear head.

    Args:
        img_size, patch_size, in_chans: input geometry; img_size must be divisible by
            patch_size (checked here), and the forward checks the input against it.
        num_classes: head width; 0 gives no head.
        embed_dim: the hidden width C; depth: number of mixer blocks (timm's ``num_blocks``).
        mlp_ratio: (token-MLP ratio, channel-MLP ratio), hidden widths int(r·C); paper (0.5, 4).
        drop_rate: dropout before the head; proj_drop_rate: dropout inside both MLPs;
        drop_path_rate: stochastic depth, the same rate in every block (timm).
    Initialisation (timm): Linear xavier-uniform with MLP biases normal(std 1e-6), head weight
    and bias zero, stem convolution lecun-normal (truncated), LayerNorm (1, 0).
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000,
                 embed_dim=512, depth=8, mlp_ratio=(0.5, 4.0), drop_rate=0.0,
                 proj_drop_rate=0.0, drop_path_rate=0.0):
        check_hparams(MlpMixer, locals())  # sizes > 0, rates in [0, 1), flags bool
        super().__init__()
        if not isinstance(mlp_ratio, (tuple, list)):
            mlp_ratio = (0.5, float(mlp_ratio))   # a single number sets the channel ratio
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.stem = nn.PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.img_size, self.in_chans = self.stem.img_size, in_chans
        self.blocks = nn.Sequential(*[
            MixerBlock(embed_dim, self.stem.num_patches, tuple(mlp_ratio), drop=proj_drop_rate,
                       drop_path=drop_path_rate)
            for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if name.startswith("head"):
                    nn.init.zeros_(m.weight)
                    nn.init.zeros_(m.bias)
                else:
                    nn.init.xavier_uniform_(m.weight)
                    if "mlp" in name:
                        nn.init.normal_(m.bias, std=1e-6)
                    else:
                        nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                # lecun-normal: truncated normal at ±2σ of the unit normal, rescaled so that
                # the variance is 1/fan_in (0.8796... is the std of N(0,1) truncated to ±2).
                fan_in = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
                std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x):
        check_input("MLP-Mixer", x, self.in_chans, self.img_size)
        x = self.stem(x).transpose(0, 1)                  # (S, B, C): the blocks' layout
        x = self.norm(self.blocks(x))
        return x.transpose(0, 1)                          # (B, S, C), a view

    def forward_head(self, x, pre_logits: bool = False):
        x = self.head_drop(x.mean(axis=1))                             # global average pool
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------------------------
# Named configurations
# --------------------------------------------------------------------------------------------

_ARGS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "mlp_ratio", "drop_rate",
         "proj_drop_rate", "drop_path_rate")


def _create(defaults: dict, num_classes: int, overrides: dict) -> MlpMixer:
    overrides = dict(overrides)
    if "num_blocks" in overrides:            # timm's name for depth
        overrides["depth"] = overrides.pop("num_blocks")
    unknown = set(overrides) - set(_ARGS)
    if unknown:
        raise TypeError(f"unknown MLP-Mixer config entries: {sorted(unknown)}; known: {_ARGS}")
    return MlpMixer(num_classes=num_classes, **{**defaults, **overrides})


@register_model
def mixer_b16_224(num_classes=1000, **overrides) -> MlpMixer:
    """Mixer-B/16 (paper Table 1): P16, C768, 12 blocks, DS 384, DC 3072 — 59,880,472 parameters."""
    cfg = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, mlp_ratio=(0.5, 4.0))
    return _create(cfg, num_classes, overrides)


@register_model
def mlp_mixer_cifar(num_classes=10, **overrides) -> MlpMixer:
    """CIFAR Mixer (docs/recipe.md): 32×32 input, 4×4 patches (64 tokens), C192, 8 blocks,
    token-MLP hidden 96 (0.5·C), channel-MLP hidden 384 (2·C), mean-pool head —
    1,301,706 parameters with 10 classes."""
    cfg = dict(img_size=32, patch_size=4, embed_dim=192, depth=8, mlp_ratio=(0.5, 2.0))
    return _create(cfg, num_classes, overrides)

"""Multi-head self-attention, laid out as timm's ``Attention`` (``vision_transformer.py``).

    qkv = x W_qkv^T + b     (B, N, 3C), columns ordered (3, heads, head_dim)
    q, k, v                 (B, heads, N, head_dim) each
    out = proj(concat_heads(softmax(q k^T / sqrt(head_dim) + bias) v))
"""
from __future__ import annotations

from . import functional as F
from .layers import Dropout, Linear, add_branch, passes_through
from .module import Module


class MultiheadSelfAttention(Module):
    """Self-attention over tokens (B, N, dim); children ``qkv`` (dim -> 3 dim) and ``proj``.

    ``forward(x, attn_bias=None, residual=None, drop_path=None)``: ``attn_bias`` is added to
    the scores before the softmax (float, broadcastable to (B, heads, N, N): relative position
    bias) or masks them (bool, True = attend). ``residual`` (B, N, dim) returns residual +
    drop_path(attention), the pre-norm block's ``x + drop_path(attn(norm1(x)))``, the add done
    in the projection's bias pass (``Linear.forward(..., residual=, drop_path=)``) when no
    dropout follows the projection and the drop path passes its input through.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MultiheadSelfAttention: dim {dim} is not divisible by "
                             f"num_heads {num_heads}")
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = Dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)

    def forward(self, x, attn_bias=None, residual=None, drop_path=None):
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"MultiheadSelfAttention(dim={self.dim}): expected input "
                             f"(B, N, {self.dim}), got {tuple(x.shape)}")
        p = self.attn_drop.p if self.training else 0.0
        # qkv (B, N, 3C) is (B, N, 3, heads, head_dim): q, k, v of each head, split in the op
        out = F.self_attention(self.qkv(x), self.num_heads, attn_mask=attn_bias, dropout_p=p,
                               scale=self.scale)                            # (B, N, C)
        if passes_through(self.proj_drop):     # nothing between proj and the residual add
            return self.proj(out, residual=residual, drop_path=drop_path)
        return add_branch(self, self.proj_drop(self.proj(out)), residual, drop_path)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"

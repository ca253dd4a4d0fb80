"""Image to patch tokens (timm's ``PatchEmbed``: keys ``proj.weight``, ``proj.bias``)."""
from __future__ import annotations

from .helpers import to_2tuple
from .layers import Conv2d
from .module import Identity, Module

__all__ = ["PatchEmbed"]


class PatchEmbed(Module):
    """(B, C, H, W) images -> (B, N, D) tokens: the linear projection E of the flattened P×P
    patches (ViT §3.1), written as a P×P convolution with stride P (``proj``), then the
    (gh, gw) grid flattened row-major into N = gh·gw tokens, as timm's
    ``proj(x).flatten(2).transpose(1, 2)``. (``nn.Conv2d`` runs a kernel-equals-stride conv as
    one reshape into patch rows and one GEMM, and the flatten/transpose are then free views.)
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, norm_layer=None,
                 bias: bool = True):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        (H, W), (ph, pw) = self.img_size, self.patch_size
        if H % ph or W % pw:
            raise ValueError(
                f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        self.grid_size = (H // ph, W // pw)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.proj = Conv2d(in_chans, embed_dim, kernel_size=self.patch_size,
                           stride=self.patch_size, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer else Identity()

    def forward(self, x):
        x = self.proj(x)                            # (B, D, gh, gw)
        x = x.flatten(2).transpose(1, 2)            # (B, N, D)
        return self.norm(x)

"""Depthwise 2-D convolution on channels-last (N, H, W, C) arrays.

Models whose activations are tokens, (B, h*w, C) or (B, h, w, C), convolve them depthwise
(CeiT's LeFF, MaxViT's MBConv): each channel with its own kh x kw kernel::

    out[n, y, x, c] = b[c] + Σ_(i, j) W[c, 0, i, j] xpad[n, y s + i d, x s + j d, c]

This is ``conv2d(..., groups=C)`` of the transposed input, and the reference body computes
it so (``conv.ChannelsLastConv``: one im2col, one depthwise convolution). The weight keeps
PyTorch's layout (C, 1, kh, kw), so it is the same parameter an NCHW
``conv2d(..., groups=C)`` uses and state dicts are unchanged. The fast body (no transposes:
each kernel offset one multiply-add over whole rows of the padded input, a few images at a
time on all cores) is in ``minivit/kernels/cpu_conv_nhwc.py``.
"""
from __future__ import annotations

from ...autograd.autocast import cast_inputs
from .conv import ChannelsLastConv, out_size, pair

__all__ = ["depthwise_conv2d_nhwc"]


def _padding(padding, op: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """int, (ph, pw) or ((top, bottom), (left, right)) -> ((top, bottom), (left, right))."""
    if (isinstance(padding, (tuple, list)) and len(padding) == 2
            and all(isinstance(p, (tuple, list)) for p in padding)):
        (t, b), (lft, r) = (pair(p, "padding", op, 0) for p in padding)
        return (t, b), (lft, r)
    ph, pw = pair(padding, "padding", op, 0)
    return (ph, ph), (pw, pw)


def expect_nhwc(x) -> tuple[int, int, int, int]:
    """(N, H, W, C) of a channels-last input, or the error that says what was expected."""
    if x.ndim != 4:
        raise ValueError(f"expected a 4-D channels-last input (N, H, W, C), got {x.ndim}-D")
    return x.shape


def check_nhwc(x, kernel, padding, stride, dilation) -> tuple[int, int]:
    """Check that the (dilated) kernel fits the padded channels-last input; returns the
    output size (Ho, Wo). Shared with ``conv2d_nhwc``."""
    (kh, kw), ((pt, pb), (pl, pr)), (sh, sw), (dh, dw) = kernel, padding, stride, dilation
    hp, wp = x.shape[1] + pt + pb, x.shape[2] + pl + pr
    if dh * (kh - 1) + 1 > hp or dw * (kw - 1) + 1 > wp:
        raise ValueError(f"kernel {kh}x{kw} (dilation {dilation}) is larger than the padded "
                         f"input {hp}x{wp} (padding {padding})")
    return out_size(hp, kh, sh, 0, dh), out_size(wp, kw, sw, 0, dw)


def check_depthwise(x, weight, bias) -> int:
    """C of a channels-last input whose depthwise weight (C, 1, kh, kw) and bias (C,) fit."""
    n, h, w, c = expect_nhwc(x)
    if weight.ndim != 4 or tuple(weight.shape[:2]) != (c, 1):
        raise ValueError(f"expected a depthwise weight of shape ({c}, 1, kh, kw) for an "
                         f"input with {c} channels (last axis), got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (c,):
        raise ValueError(f"bias of shape {tuple(bias.shape)} does not match the {c} "
                         f"channels (expected ({c},))")
    return c


class DepthwiseConv2dNHWC(ChannelsLastConv):
    """y = depthwise_conv(x, W) + b on (N, H, W, C) (module docstring).
    Fast body: minivit/kernels/cpu_conv_nhwc.py."""

    name = "depthwise_conv2d_nhwc"

    def forward(ctx, x, weight, bias=None, stride=(1, 1), padding=((0, 0), (0, 0)),
                dilation=(1, 1)):
        c = check_depthwise(x, weight, bias)
        check_nhwc(x, weight.shape[2:], padding, stride, dilation)
        return ctx.conv(x, weight, bias, stride, padding, dilation, groups=c)


def depthwise_conv2d_nhwc(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """Depthwise conv of a channels-last (N, H, W, C) tensor -> (N, Ho, Wo, C).

    The same numbers as ``conv2d(x.permute(0, 3, 1, 2), weight, bias, stride, padding,
    dilation, groups=C).permute(0, 2, 3, 1)``, without the transposes. ``weight`` is
    (C, 1, kh, kw); ``padding`` is an int, a pair (ph, pw), or ((top, bottom), (left, right))
    for asymmetric padding such as TF's 'SAME'. Example::

        x = minivit.randn(2, 8, 8, 16)                       # 16 channels, last
        w = minivit.randn(16, 1, 3, 3)
        depthwise_conv2d_nhwc(x, w, padding=1).shape         # (2, 8, 8, 16)
    """
    op = DepthwiseConv2dNHWC.op_name()
    attrs = dict(stride=pair(stride, "stride", op, 1), padding=_padding(padding, op),
                 dilation=pair(dilation, "dilation", op, 1))
    if bias is None:
        return DepthwiseConv2dNHWC.apply(x, weight, **attrs)
    return DepthwiseConv2dNHWC.apply(x, weight, bias, **attrs)


cast_inputs(DepthwiseConv2dNHWC, None)   # bf16/fp16 under minivit.autocast (autograd/autocast.py)

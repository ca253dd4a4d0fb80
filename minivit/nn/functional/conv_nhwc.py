"""2-D convolution on channels-last (N, H, W, C) arrays -> (N, Ho, Wo, O).

The same numbers as ``conv2d(x.permute(0, 3, 1, 2), ...).permute(0, 2, 3, 1)`` (groups 1),
and the reference body computes it so (``conv.ChannelsLastConv``: the one im2col and GEMM of
``conv.py``). The fast body, im2col in the channels-last layout itself (the window of kernel
offset (i, j) at output (n, y, x) is a run of C contiguous numbers, and the GEMM's output
already is the channels-last result), is in ``minivit/kernels/cpu_conv_nhwc.py``. The weight
keeps PyTorch's layout (O, C, kh, kw), so state dicts are unchanged. Dense convolutions only
(groups 1); depthwise ones have ``depthwise_conv2d_nhwc``.
"""
from __future__ import annotations

from ...autograd.autocast import cast_inputs
from .conv import ChannelsLastConv, pair
from .depthwise import _padding, check_nhwc, expect_nhwc

__all__ = ["conv2d_nhwc"]


def check_conv_nhwc(x, weight, bias, stride, padding, dilation) -> tuple[int, int]:
    """(Ho, Wo) of a channels-last conv whose weight (O, C, kh, kw) and bias (O,) fit x."""
    n, h, w, c = expect_nhwc(x)
    if weight.ndim != 4 or weight.shape[1] != c:
        raise ValueError(f"expected a weight of shape (out_channels, {c}, kh, kw) for an "
                         f"input with {c} channels (last axis), got {tuple(weight.shape)}")
    o = weight.shape[0]
    if bias is not None and tuple(bias.shape) != (o,):
        raise ValueError(f"bias of shape {tuple(bias.shape)} does not match out_channels={o} "
                         f"(expected ({o},))")
    return check_nhwc(x, weight.shape[2:], padding, stride, dilation)


class Conv2dNHWC(ChannelsLastConv):
    """y = conv2d(x, W) + b on (N, H, W, C) -> (N, Ho, Wo, O); grads for x, W and b.
    Fast body: minivit/kernels/cpu_conv_nhwc.py."""

    name = "conv2d_nhwc"

    def forward(ctx, x, weight, bias=None, stride=(1, 1), padding=((0, 0), (0, 0)),
                dilation=(1, 1)):
        check_conv_nhwc(x, weight, bias, stride, padding, dilation)
        return ctx.conv(x, weight, bias, stride, padding, dilation, groups=1)


def conv2d_nhwc(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """2-D convolution of a channels-last (N, H, W, C) tensor -> (N, Ho, Wo, O).

    The same numbers as ``conv2d(x.permute(0, 3, 1, 2), weight, bias, stride, padding,
    dilation).permute(0, 2, 3, 1)`` (groups 1), without the layout copies. ``weight`` is
    (O, C, kh, kw); ``padding`` an int, a pair, or ((top, bottom), (left, right)). Example::

        x = minivit.randn(2, 8, 8, 16)
        w = minivit.randn(32, 16, 3, 3)
        conv2d_nhwc(x, w, padding=1).shape       # (2, 8, 8, 32)
    """
    op = Conv2dNHWC.op_name()
    attrs = dict(stride=pair(stride, "stride", op, 1), padding=_padding(padding, op),
                 dilation=pair(dilation, "dilation", op, 1))
    if bias is None:
        return Conv2dNHWC.apply(x, weight, **attrs)
    return Conv2dNHWC.apply(x, weight, bias, **attrs)


cast_inputs(Conv2dNHWC, None)   # bf16/fp16 under minivit.autocast (autograd/autocast.py)

"""The layers (PyTorch's names, parameter layouts and default initialisation).

Each layer owns its parameters and calls one function of ``minivit.nn.functional``.

The layers that can end a residual branch (``Linear``, ``LinearColumns``, ``Conv2d``; ``Mlp``,
``MultiheadSelfAttention`` and ``BatchNormAct*`` built on them) take ``residual=`` and
``drop_path=`` and return ``residual + drop_path(layer(x))``, so a model writes its pre-norm
block as ``x = self.mlp(self.norm2(x), residual=x, drop_path=self.drop_path)``. Where the drop
path passes its input through (none, ``Identity``, rate 0, or eval: ``passes_through``) the
layer adds the residual inside its own fused op (in the bias pass of ``F.linear``, in
``F.batch_norm``'s one pass): the same numbers as the separate add, one pass over the
activations and one GPU launch fewer. Otherwise it computes its output, drops it and adds.
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd.ops import pad
from . import functional as F
from . import init
from .helpers import same_padding, to_2tuple
from .module import Identity, Module, Parameter


def _empty(*shape) -> Parameter:
    return Parameter(np.zeros(shape, dtype=np.float32))


def _pair(v, what: str, layer: str) -> tuple[int, int]:
    try:
        return to_2tuple(v)
    except ValueError:
        raise ValueError(f"{layer}: {what} must be an int or a pair, got {v!r}") from None


# --- linear and convolution ---------------------------------------------------------------

class Linear(Module):
    """y = x W^T + b; weight (out_features, in_features), bias (out_features,).

    Init as PyTorch: W ~ kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(in)), b ~ U(+-1/sqrt(in)).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _empty(out_features, in_features)
        if bias:
            self.bias = _empty(out_features)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x, act: Module | None = None, residual=None, drop_path=None):
        """x W^T + b. Two optional fusions, for the layers built on Linear (``Mlp``, attention):
        ``act``, an activation module: act(x W^T + b), one op (``F.linear(..., act=)``) when it
        is a GELU, whose bias add rides on the GELU's pass; ``residual`` (the output's shape):
        residual + drop_path(x W^T + b), the add done in the bias pass
        (``F.linear(..., residual=)``) when ``drop_path`` passes through (``passes_through``)."""
        if drops_samples(self, residual, drop_path):
            return add_branch(self, self.forward(x, act), residual, drop_path)
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"{self!r}: expected input (..., {self.in_features}), "
                             f"got {tuple(x.shape)}")
        return self._affine(F.linear, x, act, residual)

    def _affine(self, linear, x, act, residual):
        """``linear`` (``F.linear`` or ``F.linear_columns``) with the fusions of ``forward``."""
        fused = fused_act_name(act)
        if act is None or (fused in _LINEAR_ACTS and residual is None):
            return linear(x, self.weight, self.bias, act=fused, residual=residual)
        y = linear(x, self.weight, self.bias, act=fused if fused in _LINEAR_ACTS else None)
        y = y if fused in _LINEAR_ACTS else act(y)
        return y if residual is None else residual + y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class LinearColumns(Linear):
    """The same map as ``Linear`` (same parameters) on the FIRST axis: x (in_features, ...)
    -> (out_features, ...), y = W x + b column by column (``F.linear_columns``), one GEMM on
    a free reshape. The Mixer's token MLP runs on tokens-first (S, B, C) maps with it, so the
    MLP over the S axis needs no transpose."""

    def forward(self, x, act: Module | None = None, residual=None, drop_path=None):
        if drops_samples(self, residual, drop_path):
            return add_branch(self, self.forward(x, act), residual, drop_path)
        if x.ndim < 1 or x.shape[0] != self.in_features:
            raise ValueError(f"{self!r}: expected input ({self.in_features}, ...), "
                             f"got {tuple(x.shape)}")
        rest = tuple(x.shape[1:])
        r = None if residual is None else residual.reshape(self.out_features, -1)
        y = self._affine(F.linear_columns, x.reshape(self.in_features, -1), act, r)
        return y.reshape(self.out_features, *rest)


class Conv2d(Module):
    """2-D convolution; weight (out_channels, in_channels / groups, kh, kw), bias (out,).

    Init as PyTorch: kaiming_uniform(a=sqrt(5)), bias U(+-1/sqrt(fan_in)).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, channels_last: bool = False):
        super().__init__()
        self.channels_last = channels_last
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels {in_channels} and out_channels "
                             f"{out_channels} must both be divisible by groups {groups}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "kernel_size", "Conv2d")
        self.stride = _pair(stride, "stride", "Conv2d")
        self.padding = padding if isinstance(padding, str) else _pair(padding, "padding", "Conv2d")
        self.dilation = _pair(dilation, "dilation", "Conv2d")
        self.weight = _empty(out_channels, in_channels // groups, *self.kernel_size)
        if bias:
            self.bias = _empty(out_channels)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x, residual=None, drop_path=None):
        """conv(x), or residual + drop_path(conv(x)) (``residual`` of the output's shape). With
        ``channels_last=True`` x is a (N, H, W, C) map and so is the result: a 1x1 conv is then
        one Linear on the rows (``F.linear``, the residual added in its bias pass when
        ``drop_path`` passes through), a depthwise conv ``F.depthwise_conv2d_nhwc``, a dense one
        ``F.conv2d_nhwc``; the weight keeps its (out, in / groups, kh, kw) shape either way."""
        if drops_samples(self, residual, drop_path):
            return add_branch(self, self.forward(x), residual, drop_path)
        if not self.channels_last:
            if x.ndim != 4 or x.shape[1] != self.in_channels:
                raise ValueError(f"{self!r}: expected input (N, {self.in_channels}, H, W), "
                                 f"got {tuple(x.shape)}")
            if self._patchify(x):
                y = self._patch_linear(x)
            else:
                y = F.conv2d(self._pad(x), self.weight, self.bias, self.stride,
                             self._nchw_padding(), self.dilation, self.groups)
            return y if residual is None else residual + y
        if x.ndim != 4 or x.shape[3] != self.in_channels:
            raise ValueError(f"{self!r}: expected a channels-last input (N, H, W, "
                             f"{self.in_channels}), got {tuple(x.shape)}")
        padding = self._nhwc_padding(x)
        if (self.groups == 1 and self.kernel_size + self.stride == (1, 1, 1, 1)
                and padding == ((0, 0), (0, 0))):
            w = self.weight.reshape(self.out_channels, self.in_channels)
            return F.linear(x, w, self.bias, residual=residual)
        if self.groups == self.in_channels == self.out_channels:
            y = F.depthwise_conv2d_nhwc(x, self.weight, self.bias, self.stride, padding,
                                        self.dilation)
        elif self.groups == 1:
            y = F.conv2d_nhwc(x, self.weight, self.bias, self.stride, padding, self.dilation)
        else:
            raise ValueError(f"{self!r}: channels_last runs dense (groups=1) and depthwise "
                             f"convolutions, got groups={self.groups}")
        return y if residual is None else residual + y

    def _patchify(self, x) -> bool:
        """Non-overlapping windows that tile the input exactly (a ViT patch embedding)."""
        return (self.kernel_size == self.stride and self.dilation == (1, 1) and self.groups == 1
                and self._nchw_padding() in ((0, 0), "valid", 0) and type(self) is Conv2d
                and x.shape[2] % self.stride[0] == 0 and x.shape[3] % self.stride[1] == 0)

    def _patch_linear(self, x):
        """The same numbers for kernel == stride: the windows do not overlap, so the input is
        reshaped into one row per window, ordered (c, i, j) like the weight's (in, kh, kw), and
        one Linear with the weight viewed as (out, in·kh·kw) does the rest, no im2col. The
        result is an NCHW view of the (N, gh, gw, out) product."""
        n, c, h, w = x.shape
        (ph, pw), (gh, gw) = self.kernel_size, (h // self.stride[0], w // self.stride[1])
        rows = x.reshape(n, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)
        rows = rows.reshape(n, gh * gw, c * ph * pw)                     # (N, gh·gw, c·ph·pw)
        y = F.linear(rows, self.weight.reshape(self.out_channels, c * ph * pw), self.bias)
        return y.reshape(n, gh, gw, self.out_channels).permute(0, 3, 1, 2)

    def _pad(self, x):
        """The input as the NCHW convolution reads it (``Conv2dSame`` pads it here)."""
        return x

    def _nchw_padding(self):
        return self.padding

    def _nhwc_padding(self, x) -> tuple[tuple[int, int], tuple[int, int]]:
        """((top, bottom), (left, right)) for a channels-last input x."""
        if self.padding == "valid":
            return (0, 0), (0, 0)
        if self.padding == "same":
            if self.stride != (1, 1):
                raise ValueError(f"{self!r}: padding='same' needs stride 1 (Conv2dSame pads "
                                 f"strided convolutions as TF)")
            return tuple(same_padding(x.shape[1 + a], self.kernel_size[a], 1,
                                      self.dilation[a]) for a in (0, 1))
        return tuple((p, p) for p in self.padding)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding not in ((0, 0), "valid"):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.channels_last:
            s += ", channels_last=True"
        return s


class Conv2dSame(Conv2d):
    """Conv2d with TensorFlow's 'SAME' padding (timm's ``Conv2dSame``): the padding is computed
    from the input size at each call so the output has ceil(size / stride) positions, an odd
    total putting the extra pixel after (bottom/right). The TF-ported models (MaxViT) need it
    for their strided convolutions; the parameters are Conv2d's."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, channels_last: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation, groups,
                         bias, channels_last)

    def _same(self, h: int, w: int):
        return tuple(same_padding(size, self.kernel_size[a], self.stride[a], self.dilation[a])
                     for a, size in enumerate((h, w)))

    def _pad(self, x):
        (t, b), (lft, r) = self._same(x.shape[2], x.shape[3])
        if t == b == lft == r == 0:
            return x
        return pad(x, ((0, 0), (0, 0), (t, b), (lft, r)))

    def _nchw_padding(self):
        return 0

    def _nhwc_padding(self, x):
        return self._same(x.shape[1], x.shape[2])


# --- normalisation -------------------------------------------------------------------------

class LayerNorm(Module):
    """Normalise the trailing ``normalized_shape`` axes; weight ones, bias zeros."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True):
        super().__init__()
        shape = normalized_shape
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.normalized_shape, self.eps = shape, eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(np.ones(shape, dtype=np.float32))
            if bias:
                self.bias = Parameter(np.zeros(shape, dtype=np.float32))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


class _BatchNorm(Module):
    """Shared by BatchNorm1d/2d: weight ones, bias zeros; buffers running_mean (zeros),
    running_var (ones), num_batches_tracked (int64 scalar). ``momentum=None`` gives the
    cumulative average of all batches, as PyTorch."""

    expected_dims: tuple[int, ...] = ()
    # data parallelism with synchronised statistics sets this (``distributed.sync_batchnorm``)
    sum_across = None

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=np.float32))
            self.bias = Parameter(np.zeros(num_features, dtype=np.float32))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype=np.float32))
            self.register_buffer("running_var", np.ones(num_features, dtype=np.float32))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def forward(self, x, act: str | None = None, residual=None):
        """``act`` ("relu", "gelu", "gelu_tanh"): that activation of BN(x), as one fused op;
        ``residual`` (x's shape; act None or "relu"): act(BN(x) + residual), the same one op."""
        if x.ndim not in self.expected_dims or x.shape[1] != self.num_features:
            dims = " or ".join(f"{d}-D" for d in self.expected_dims)
            raise ValueError(f"{self!r}: expected a {dims} input with {self.num_features} "
                             f"channels on axis 1, got {tuple(x.shape)}")
        return self._normalise(x, act, residual)

    def forward_channels_last(self, x, act: str | None = None, residual=None):
        """The same normalisation for channels on the LAST axis, (..., C): statistics over all
        the other axes, exactly what ``forward`` computes on the channels-first layout (used
        by models that keep tokens or NHWC maps, so no transpose is needed)."""
        if x.ndim < 2 or x.shape[-1] != self.num_features:
            raise ValueError(f"{self!r}: expected a channels-last input (..., "
                             f"{self.num_features}), got {tuple(x.shape)}")
        if residual is not None and tuple(residual.shape) != tuple(x.shape):
            raise ValueError(f"{self!r}: residual has shape {tuple(residual.shape)}, expected "
                             f"the input's {tuple(x.shape)}")
        r = None if residual is None else residual.reshape(-1, self.num_features)
        return self._normalise(x.reshape(-1, self.num_features), act, r).reshape(x.shape)

    def _normalise(self, x, act: str | None = None, residual=None):
        momentum = self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data[...] += 1
            if momentum is None:  # cumulative moving average
                momentum = 1.0 / int(self.num_batches_tracked.data)
        use_batch = self.training or not self.track_running_stats
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            use_batch, 0.0 if momentum is None else momentum, self.eps, act=act,
                            residual=residual, sum_across=self.sum_across)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """BatchNorm over (N, C) or (N, C, L) inputs (statistics per channel C)."""

    expected_dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """BatchNorm over (N, C, H, W) inputs (statistics per channel C)."""

    expected_dims = (4,)


# --- activations, dropout, reshaping -------------------------------------------------------

_LINEAR_ACTS = ("gelu", "gelu_tanh")        # the activations F.linear fuses (act=)


def fused_act_name(act: Module | None) -> str | None:
    """The name under which the fused functionals (``F.linear(..., act=)``,
    ``F.batch_norm(..., act=)``) run the activation module ``act``: "gelu", "gelu_tanh",
    "relu", or None (no activation, or one they do not fuse)."""
    return None if act is None else getattr(act, "fused_name", None)


class GELU(Module):
    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    @property
    def fused_name(self) -> str:
        return "gelu" if self.approximate == "none" else "gelu_tanh"

    def forward(self, x):
        return F.gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return "" if self.approximate == "none" else f"approximate='{self.approximate}'"


class ReLU(Module):
    fused_name = "relu"

    def __init__(self, inplace: bool = False):  # inplace is accepted and ignored
        super().__init__()

    def forward(self, x):
        return F.relu(x)


class SiLU(Module):
    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, x):
        return F.silu(x)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class Softmax(Module):
    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Flatten(Module):
    """Flatten axes ``start_dim`` .. ``end_dim`` (default: all but the batch axis)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Dropout(Module):
    """Inverted dropout with probability ``p`` in training; the identity in eval."""

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = float(p)

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class DropPath(Module):
    """Stochastic depth per sample (timm's ``DropPath``); the identity in eval."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True, batch_dim: int = 0):
        super().__init__()
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"DropPath: drop_prob must be in [0, 1], got {drop_prob}")
        self.drop_prob, self.scale_by_keep = float(drop_prob), scale_by_keep
        self.batch_dim = batch_dim      # the samples' axis (1 for tokens-first (S, B, C) maps)

    def forward(self, x):
        if self.batch_dim == 0:
            return F.drop_path(x, self.drop_prob, self.training, self.scale_by_keep)
        x = x.transpose(0, self.batch_dim)                  # a view with the samples first
        y = F.drop_path(x, self.drop_prob, self.training, self.scale_by_keep)
        return y.transpose(0, self.batch_dim)

    def extra_repr(self) -> str:
        s = f"drop_prob={round(self.drop_prob, 3):0.3f}"
        return s if self.batch_dim == 0 else f"{s}, batch_dim={self.batch_dim}"


def passes_through(module: Module | None) -> bool:
    """Whether ``module`` returns its input unchanged now: None, ``Identity``, or a
    ``Dropout`` / ``DropPath`` with rate 0 or in eval mode. Any other module may change it."""
    if module is None or isinstance(module, Identity):
        return True
    if isinstance(module, Dropout):
        return module.p == 0.0 or not module.training
    if isinstance(module, DropPath):
        return module.drop_prob == 0.0 or not module.training
    return False


def drops_samples(layer: Module, residual, drop_path: Module | None) -> bool:
    """For a layer that ends a residual branch, called as ``layer(x, residual=r,
    drop_path=dp)``: True when ``dp`` will change the branch, so the layer must compute its
    output, apply ``dp`` and then add ``r`` (``add_branch``); False when the add may go into
    its fused op."""
    _check_branch(layer, residual, drop_path)
    return not passes_through(drop_path)


def add_branch(layer: Module, y, residual, drop_path: Module | None):
    """``residual + drop_path(y)`` the plain way, ``y`` itself when there is no residual."""
    _check_branch(layer, residual, drop_path)
    if residual is None:
        return y
    return residual + (y if drop_path is None else drop_path(y))


def _check_branch(layer: Module, residual, drop_path) -> None:
    if drop_path is not None and residual is None:
        raise ValueError(f"{layer!r}: drop_path= drops a residual branch and needs residual=, "
                         f"got residual=None")


# --- pooling (functions in functional/pooling.py) ------------------------------------------

class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding, self.dilation, self.ceil_mode = padding, dilation, ceil_mode

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                            self.ceil_mode)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding, self.ceil_mode = padding, ceil_mode
        self.count_include_pad = count_include_pad

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size=1):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


# --- losses as layers ---------------------------------------------------------------------

class CrossEntropyLoss(Module):
    def __init__(self, label_smoothing: float = 0.0, reduction: str = "mean"):
        super().__init__()
        self.label_smoothing, self.reduction = label_smoothing, reduction

    def forward(self, input, target):
        return F.cross_entropy(input, target, self.label_smoothing, self.reduction)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}" if self.label_smoothing else ""


__all__ = ["Linear", "LinearColumns", "Conv2d", "Conv2dSame", "fused_act_name", "LayerNorm",
           "BatchNorm1d", "BatchNorm2d", "GELU", "ReLU", "SiLU", "Sigmoid", "Tanh", "Softmax",
           "Flatten", "Dropout", "DropPath", "passes_through", "drops_samples", "add_branch",
           "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "CrossEntropyLoss"]

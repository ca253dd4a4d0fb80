"""``minivit.nn``: Module, Parameter, containers, layers, ``init`` and ``functional``.

    from minivit import nn
    import minivit.nn.functional as F
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))

Besides PyTorch's layers, the building blocks the models share, under timm's names: ``Mlp``,
``PatchEmbed``, ``BatchNormAct2d``, ``Conv2dSame``, ``ClassifierHead``,
``NormMlpClassifierHead`` and the helpers ``make_divisible``, ``to_2tuple``. Where a fused op
runs (linear+GELU, BatchNorm+activation+residual, channels-last convolutions), it runs inside
one of these layers, never in a model file.
"""
from . import functional, init, utils
from .attention import MultiheadSelfAttention
from .classifier import ClassifierHead, NormMlpClassifierHead
from .helpers import make_divisible, same_padding, to_2tuple
from .layers import (GELU, AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d,
                     Conv2dSame, CrossEntropyLoss, DropPath, Dropout, Flatten, LayerNorm, Linear,
                     LinearColumns, MaxPool2d, ReLU, Sigmoid, SiLU, Softmax, Tanh)
from .mlp import Mlp
from .module import (Identity, Module, ModuleDict, ModuleList, Parameter, Sequential,
                     StateDictError)
from .norm_act import BatchNormAct1d, BatchNormAct2d
from .patch_embed import PatchEmbed

__all__ = ["Module", "Parameter", "Sequential", "ModuleList", "ModuleDict", "Identity",
           "StateDictError", "Linear", "LinearColumns", "Conv2d", "Conv2dSame", "LayerNorm",
           "BatchNorm1d", "BatchNorm2d", "BatchNormAct1d", "BatchNormAct2d", "GELU", "ReLU",
           "SiLU", "Sigmoid", "Tanh", "Softmax", "Flatten", "Dropout", "DropPath", "MaxPool2d",
           "AvgPool2d", "AdaptiveAvgPool2d", "MultiheadSelfAttention", "Mlp", "PatchEmbed",
           "ClassifierHead", "NormMlpClassifierHead", "CrossEntropyLoss", "make_divisible",
           "to_2tuple", "same_padding", "functional", "init", "utils"]

"""``minivit.nn``: Module, Parameter, containers, layers, ``init`` and ``functional``.

    from minivit import nn
    import minivit.nn.functional as F
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
"""
from . import functional, init
from .attention import MultiheadSelfAttention
from .layers import (GELU, AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d,
                     CrossEntropyLoss, DropPath, Dropout, Flatten, LayerNorm, Linear, MaxPool2d,
                     ReLU, Sigmoid, SiLU, Softmax, Tanh)
from .module import (Identity, Module, ModuleDict, ModuleList, Parameter, Sequential,
                     StateDictError)

__all__ = ["Module", "Parameter", "Sequential", "ModuleList", "ModuleDict", "Identity",
           "StateDictError", "Linear", "Conv2d", "LayerNorm", "BatchNorm1d", "BatchNorm2d",
           "GELU", "ReLU", "SiLU", "Sigmoid", "Tanh", "Softmax", "Flatten", "Dropout",
           "DropPath", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "MultiheadSelfAttention",
           "CrossEntropyLoss", "functional", "init"]

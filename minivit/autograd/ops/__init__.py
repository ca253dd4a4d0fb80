"""Every differentiable op of the engine: the Function classes and their functional names."""
from .elementwise import (  # noqa: F401
    GELU, Abs, Add, Cast, Clip, Div, Erf, Exp, Log, Maximum, Minimum, Mul, Neg, Pow, PowScalar,
    ReLU, Sigmoid, Sqrt, Sub, Tanh, ToDevice, Where,
    abs, add, clip, div, erf, exp, gelu, log, maximum, minimum, mul, neg, pow, relu, sigmoid,
    sqrt, sub, tanh, where,
)
from .matmul import Einsum, MatMul, einsum, matmul  # noqa: F401
from .reduce import (  # noqa: F401
    LogSoftmax, LogSumExp, Max, Mean, Min, Softmax, Sum, Var,
    axis_of, log_softmax, logsumexp, max, mean, min, softmax, std, sum, var,
)
from .shape import (  # noqa: F401
    BroadcastTo, Concatenate, GetItem, Pad, Permute, Reshape, Roll, Split, Stack,
    broadcast_to, cat, chunk, concatenate, flatten, getitem, pad, permute, reshape, roll,
    split, squeeze, stack, swapaxes, transpose, unsqueeze,
)
from .torch_like import (  # noqa: F401
    Clone, MaskedFill, Repeat, ValuesIndices, clone, masked_fill, norm, repeat,
)

"""The transformer MLP (timm's ``Mlp``: name, signature and keys ``fc1``, ``fc2``).

    x -> fc1 -> act -> dropout -> fc2 -> dropout

With a GELU, ``fc1`` and the activation run as one op (``Linear.forward(x, act=)`` ->
``F.linear(..., act="gelu")``). A pre-norm block ends its MLP branch with it:

    x = self.mlp(self.norm2(x), residual=x, drop_path=self.drop_path)   # x + DropPath(MLP(LN(x)))

and the MLP hands the add to fc2 (``Linear.forward(..., residual=, drop_path=)``), which does
it in its bias pass whenever the drop path passes its input through (rate 0 or eval). The
same numbers as the separate steps, one pass over the residual stream fewer.
"""
from __future__ import annotations

from .layers import GELU, Dropout, Linear, add_branch, passes_through
from .module import Module

__all__ = ["Mlp"]


class Mlp(Module):
    """fc1 (in -> hidden), ``act_layer()`` (GELU), dropout, fc2 (hidden -> out), dropout.

    ``act_layer`` is a class or any callable returning the activation module (for the tanh
    GELU: ``functools.partial(nn.GELU, approximate="tanh")``). ``linear_layer`` builds fc1 and
    fc2 (``nn.LinearColumns`` maps the FIRST axis instead of the last: the Mixer's token MLP).
    """

    def __init__(self, in_features: int, hidden_features: int | None = None,
                 out_features: int | None = None, act_layer=GELU, bias: bool = True,
                 drop: float = 0.0, linear_layer=Linear):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = linear_layer(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = Dropout(drop)
        self.fc2 = linear_layer(hidden_features, out_features, bias=bias)
        self.drop2 = Dropout(drop)

    def forward(self, x, residual=None, drop_path=None):
        """drop(fc2(drop(act(fc1(x))))); with ``residual``, residual + drop_path(that)."""
        x = self.fc1(x, act=self.act)             # act(fc1(x)): one fused op for a GELU
        x = self.drop1(x)
        if passes_through(self.drop2):            # nothing between fc2 and the residual add
            return self.fc2(x, residual=residual, drop_path=drop_path)
        return add_branch(self, self.drop2(self.fc2(x)), residual, drop_path)

"""Seeing inside a model: the graph as DOT text, a summary table, attention maps.

    from minivit.utils import to_dot, summary
    print(summary(model, input_size=(3, 32, 32)))
    open("step.dot", "w").write(to_dot(loss, params=dict(model.named_parameters())))
"""
from .graph import to_dot
from .summary import summary

__all__ = ["summary", "to_dot"]

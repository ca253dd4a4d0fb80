"""Seeing inside a model: the graph as DOT text, a summary table, attention maps.

    from minivit.utils import to_dot, summary
    print(summary(model, input_size=(3, 32, 32)))
    open("step.dot", "w").write(to_dot(loss, params=dict(model.named_parameters())))
    with capture_attention(model) as maps:
        model(x)          # maps: {"blocks.0.attn": (B, heads, queries, keys) probabilities}
"""
from .attention import attention_rollout, capture_attention
from .graph import to_dot
from .summary import summary

__all__ = ["attention_rollout", "capture_attention", "summary", "to_dot"]

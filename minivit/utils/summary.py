"""``summary(model)``: a torchinfo-like table of a model, one row per module in tree order.

One forward pass (eval mode, no grad) on a random batch, with a forward-pre and a forward
hook on every module: the pre-hook starts a FLOP counter (``minivit/autograd/flops.py``, the
one ``minivit bench`` uses), the forward hook stops it and notes the output's shape. Counters
nest, so a module's FLOPs include its children's; the model's row is the whole forward.
Parameters per row also include the children's, so the model's row is ``num_parameters()``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..autograd.flops import count_flops
from ..autograd.tensor import Tensor


@dataclass
class SummaryRow:
    name: str            # dotted module name ("" for the model)
    type: str            # class name
    depth: int
    output_shape: list   # shapes of its outputs at the last call ([] if never called)
    params: int          # parameters of the module and its children (each counted once)
    flops: int           # forward FLOPs of all its calls (products: matmul, einsum, conv)
    calls: int = 0


@dataclass
class ModelSummary:
    """What ``summary`` returns: ``rows``, the totals, and the table as ``str(...)``."""
    model_type: str
    input_shape: tuple
    rows: list = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    total_flops: int = 0     # of the whole batch
    depth: int | None = None

    @property
    def flops_per_image(self) -> float:
        return self.total_flops / self.input_shape[0]

    def __str__(self) -> str:
        rows = [r for r in self.rows if self.depth is None or r.depth <= self.depth]
        shown = [("  " * r.depth + (r.name.rsplit(".", 1)[-1] if r.name else "(model)"),
                  r.type, _shapes(r.output_shape), f"{r.params:,}",
                  _flops(r.flops / self.input_shape[0])) for r in rows]
        head = ("module", "type", "output shape", "params", "FLOPs/img")
        widths = [max(len(h), *(len(s[i]) for s in shown)) for i, h in enumerate(head)]
        fmt = lambda cells: "  ".join(  # noqa: E731
            c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        line = "-" * len(fmt(head))
        out = [f"{self.model_type}, input {tuple(self.input_shape)}", line, fmt(head), line]
        out += [fmt(s) for s in shown]
        out += [line,
                f"total params: {self.total_params:,} (trainable {self.trainable_params:,})",
                f"forward FLOPs per image: {self.flops_per_image / 1e9:.3f} GFLOP (products "
                f"only, as minivit bench counts; a training step is about 3x)",
                line]
        return "\n".join(out)

    __repr__ = __str__


def _shapes(shapes: list) -> str:
    if not shapes:
        return "--"
    return ", ".join("(" + ", ".join(str(n) for n in s) + ")" for s in shapes)


def _flops(n: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return "0" if n == 0 else f"{n:.0f}"


def _out_shapes(out) -> list:
    if isinstance(out, Tensor):
        return [out.shape]
    if isinstance(out, (tuple, list)):
        return [o.shape for o in out if isinstance(o, Tensor)]
    return []


def summary(model, input_size=(3, 32, 32), batch_size: int = 1, depth: int | None = None,
            device: str | None = None, seed: int = 0) -> ModelSummary:
    """A table of ``model``: one row per module in tree order (name, type, output shape,
    parameters and forward FLOPs per image, both including the children's), from one forward
    pass in eval mode on a random batch ``(batch_size, *input_size)``. ``depth`` hides rows
    nested deeper in the printed table (the totals do not change). Prints as a table.

    >>> import minivit
    >>> from minivit import nn
    >>> net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 2))
    >>> s = summary(net, input_size=(8,))
    >>> s.total_params == net.num_parameters(), s.total_flops      # 2*8*16 + 2*16*2
    (True, 320)
    >>> print(s)  # doctest: +NORMALIZE_WHITESPACE
    Sequential, input (1, 8)
    ----------------------------------------------------
    module   type        output shape  params  FLOPs/img
    ----------------------------------------------------
    (model)  Sequential  (1, 2)            178        320
      0      Linear      (1, 16)           144        256
      1      GELU        (1, 16)             0          0
      2      Linear      (1, 2)             34         64
    ----------------------------------------------------
    total params: 178 (trainable 178)
    forward FLOPs per image: 0.000 GFLOP (products only, as minivit bench counts; a training step is about 3x)
    ----------------------------------------------------
    """
    import minivit  # noqa: PLC0415
    from ..autograd import backend  # noqa: PLC0415

    input_size = tuple(int(n) for n in input_size)
    if not input_size or any(n < 1 for n in input_size):
        raise ValueError(f"summary: input_size must be positive sizes without the batch, e.g. "
                         f"(3, 32, 32); got {input_size}")
    if batch_size < 1:
        raise ValueError(f"summary: batch_size must be >= 1, got {batch_size}")
    params = next(iter(model.parameters()), None)
    if device is None:
        device = params.device if params is not None else "cpu"
    dtype = params.dtype if params is not None else np.float32
    x = np.random.default_rng(seed).standard_normal((batch_size, *input_size)).astype(dtype)
    x = minivit.tensor(backend.to_device(x, device) if device != "cpu" else x)

    named = list(model.named_modules())
    stats = {id(m): SummaryRow(name, type(m).__name__, name.count(".") + bool(name), [],
                               sum(p.numel() for p in m.parameters()), 0) for name, m in named}
    running: dict = {}

    def pre(mod, args):
        c = count_flops()
        c.__enter__()
        running.setdefault(id(mod), []).append(c)

    def post(mod, args, out):
        c = running[id(mod)].pop()
        c.__exit__(None, None, None)
        row = stats[id(mod)]
        row.flops += c.total
        row.calls += 1
        row.output_shape = _out_shapes(out)

    handles = []
    for _, m in named:
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    was_training = model.training
    model.eval()
    try:
        with minivit.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for stack in running.values():     # a forward that raised: close its counters
            for c in stack:
                c.__exit__(None, None, None)
        model.train(was_training)
    root = stats[id(model)]
    return ModelSummary(type(model).__name__, (batch_size, *input_size),
                        rows=[stats[id(m)] for _, m in named],
                        total_params=model.num_parameters(),
                        trainable_params=model.num_parameters(trainable_only=True),
                        total_flops=root.flops, depth=depth)


def summary_command(args) -> int:
    """``minivit summary MODEL``."""
    from ..models import create_model, list_models  # noqa: PLC0415

    if args.model not in list_models():
        raise ValueError(f"unknown model {args.model!r}; known models: "
                         f"{', '.join(list_models())}")
    size = tuple(args.input_size)
    model = create_model(args.model, num_classes=args.num_classes)
    print(summary(model, input_size=size, batch_size=args.batch_size, depth=args.depth))
    return 0


def add_summary_parser(sub) -> None:
    p = sub.add_parser("summary", help="a model's modules, output shapes, parameters and "
                                       "FLOPs as a table")
    p.add_argument("model", help="registry name, e.g. vit_cifar")
    p.add_argument("--input-size", type=int, nargs="+", default=[3, 32, 32], metavar="N",
                   help="input size without the batch (default 3 32 32)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--depth", type=int, default=None,
                   help="show modules nested at most this deep (default: all)")

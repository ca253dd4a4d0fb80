"""The graph behind a tensor as Graphviz DOT text (torchviz's ``make_dot``, DeZero's
``plot_dot_graph``), and ``minivit graph MODEL``: the graph of one training step.

Nodes are the ops (``grad_fn``, one per recorded Function: its name, output shape and dtype)
and the leaves that require grad (parameters under their names when ``params`` is given);
edges run the way the data flows, from each input to the op that used it. Only what autograd
recorded is drawn: constants, and anything computed under ``no_grad``, are not part of the
graph. A backward without ``retain_graph`` frees the links, so draw before calling it.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from ..autograd.tensor import Tensor


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _shape(shape) -> str:
    return str(tuple(int(n) for n in shape))


def graph_nodes(tensor: Tensor, inputs: dict | None = None):
    """Walk the graph behind ``tensor``: returns ``(ops, leaves, edges)``, where ``ops`` are
    the Functions (newest first), ``leaves`` the leaf Tensors that require grad, and ``edges``
    ``(source, op)`` pairs, one per recorded input of each op (twice for ``x * x``). A tensor
    in ``inputs`` (name -> Tensor) ends the walk: it becomes a source named by its key."""
    stops = {}
    for name, t in (inputs or {}).items():
        stops[(id(t.creator), t.output_index) if t.creator is not None else id(t)] = (name, t)
    ops, leaves, edges = [], [], []
    seen = set()
    stack = []

    def visit(node, index):
        """The graph's source for output ``index`` of ``node`` (a Function or a leaf)."""
        key = (id(node), index) if not isinstance(node, Tensor) else id(node)
        if key in stops:
            name, t = stops[key]
            if id(t) not in seen:
                seen.add(id(t))
                leaves.append(t)
            return t
        if isinstance(node, Tensor):
            if id(node) not in seen:
                seen.add(id(node))
                leaves.append(node)
            return node
        if id(node) not in seen:
            seen.add(id(node))
            ops.append(node)
            stack.append(node)
        return node

    if tensor.creator is None:
        if tensor.requires_grad:
            visit(tensor, 0)
        return ops, leaves, edges
    visit(tensor.creator, tensor.output_index)
    while stack:
        fn = stack.pop()
        for node, index in fn.next_functions:
            if node is not None:
                edges.append((visit(node, index), fn))
    return ops, leaves, edges


def to_dot(tensor: Tensor, params: dict | None = None, inputs: dict | None = None,
           title: str | None = None) -> str:
    """Graphviz DOT text of the graph that computed ``tensor``.

    ``params``: ``dict(model.named_parameters())`` to label the parameters by name;
    ``inputs``: ``{name: tensor}`` where to stop (draw the graph of one block from its input).
    Ops are boxes ``Name / output shape dtype``, leaves ellipses; the op that made ``tensor``
    is filled. ``dot -Tsvg graph.dot -o graph.svg`` renders it.

    >>> import minivit
    >>> from minivit import nn
    >>> lin = nn.Linear(3, 2)
    >>> loss = nn.functional.gelu(lin(minivit.ones(4, 3))).sum()
    >>> text = to_dot(loss, params=dict(lin.named_parameters()))
    >>> text.splitlines()[0], "GELUBackward" in text, '"weight\\\\n(2, 3) float32"' in text
    ('digraph minivit {', True, True)
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"to_dot: expected a minivit Tensor, got {type(tensor).__name__}")
    names = {id(p): n for n, p in (params or {}).items()}
    input_names = {id(t): n for n, t in (inputs or {}).items()}
    ops, leaves, edges = graph_nodes(tensor, inputs)
    ids = {}
    lines = ["digraph minivit {",
             "  graph [rankdir=TB, fontname=Helvetica" + (f", label={_quote(title)}, labelloc=t"
                                                          if title else "") + "];",
             "  node [fontname=Helvetica, fontsize=10];",
             "  edge [arrowsize=0.6];"]
    for i, t in enumerate(leaves):
        ids[id(t)] = f"t{i}"
        if id(t) in input_names:
            name, color = input_names[id(t)], "lightblue"
        elif id(t) in names:
            name, color = names[id(t)], "lightgrey"
        else:
            name, color = "leaf", "lightblue"
        label = f"{name}\n{_shape(t.shape)} {t.dtype}"
        lines.append(f"  t{i} [label={_quote(label)}, shape=ellipse, style=filled, "
                     f"fillcolor={color}];")
    for i, fn in enumerate(ops):
        ids[id(fn)] = f"op{i}"
        outs = "; ".join(f"{_shape(shape)} {np.dtype(dtype)}" for shape, dtype, _ in
                         fn.output_meta)
        label = f"{repr(fn)[1:-1]}\n{outs}"
        fill = ", style=filled, fillcolor=darkolivegreen1" if i == 0 else ""
        lines.append(f"  op{i} [label={_quote(label)}, shape=box{fill}];")
    for src, fn in edges:
        lines.append(f"  {ids[id(src)]} -> {ids[id(fn)]};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def check_graph_output(out: Path) -> tuple[str, str | None]:
    """The format of ``out`` and the ``dot`` program that renders it (None for DOT text);
    a clear error for an unknown extension or a missing Graphviz."""
    fmt = out.suffix.lower().lstrip(".")
    if fmt in ("dot", "gv"):
        return fmt, None
    if fmt not in ("svg", "png", "pdf"):
        raise ValueError(f"--out {out}: unknown graph format {out.suffix or '(none)'!r}; "
                         f"expected .dot, .gv, .svg, .png or .pdf")
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError(f"writing {out} needs Graphviz's `dot` program, which is not on "
                           f"PATH: install Graphviz (apt-get install graphviz, brew install "
                           f"graphviz) or write a .dot file")
    return fmt, dot


def write_graph(dot_text: str, out: str | Path, dpi: int | None = None) -> Path:
    """Write DOT text to ``out``: ``.dot``/``.gv`` as text, ``.svg``/``.png``/``.pdf``
    rendered by Graphviz's ``dot`` program (a clear error when it is not installed); ``dpi``
    sets the resolution of a PNG (Graphviz's default is 96)."""
    from ..checkpoint import atomic_write  # noqa: PLC0415

    out = Path(out)
    fmt, dot = check_graph_output(out)
    if dot is None:
        atomic_write(out, lambda f: f.write(dot_text.encode()))
        return out
    res = subprocess.run([dot, f"-T{fmt}"] + ([f"-Gdpi={int(dpi)}"] if dpi else []), input=dot_text.encode(), capture_output=True)
    if res.returncode != 0:
        raise RuntimeError(f"dot -T{fmt} failed: {res.stderr.decode(errors='replace').strip()}")
    atomic_write(out, lambda f: f.write(res.stdout))
    return out


def training_step_graph(model_name: str, batch_size: int = 2, block: str | None = None,
                        seed: int = 0, **model_args) -> str:
    """DOT text of one training step of a registered model on random CIFAR-sized images: the
    loss (label-smoothed cross-entropy) back to the input and the parameters; with ``block``
    (a sub-module name, e.g. ``blocks.0``) only that module's graph, from its input.

    >>> text = training_step_graph("vit_cifar", block="blocks.0", depth=1)
    >>> "blocks.0.attn.qkv.weight" in text and "CrossEntropy" not in text
    True
    """
    import minivit  # noqa: PLC0415
    from ..models import create_model, list_models  # noqa: PLC0415
    from ..nn import functional as F  # noqa: PLC0415

    if model_name not in list_models():
        raise ValueError(f"unknown model {model_name!r}; known models: "
                         f"{', '.join(list_models())}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    minivit.manual_seed(seed)
    model = create_model(model_name, num_classes=10, **model_args)
    rng = np.random.default_rng(seed)
    x = minivit.tensor(rng.standard_normal((batch_size, 3, 32, 32)).astype(np.float32))
    y = minivit.tensor(rng.integers(0, 10, batch_size))
    params = dict(model.named_parameters())
    if block is None:
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        return to_dot(loss, params=params, inputs={"images": x},
                      title=f"{model_name}: one training step (batch {batch_size})")
    names = dict(model.named_modules())
    if block not in names or not block:
        raise ValueError(f"--block {block!r} is not a sub-module of {model_name}; e.g. "
                         f"{', '.join(n for n, _ in list(model.named_children())[:6])}")
    seen = {}

    def grab(mod, args, out):
        seen.setdefault("io", (args, out))

    with names[block].register_forward_hook(grab):
        model(x)
    args, out = seen["io"]
    out = out[0] if isinstance(out, (tuple, list)) else out
    inputs = {f"input {i}": a for i, a in enumerate(args) if isinstance(a, Tensor)}
    # the block's input was made by the ops before it: give it a leaf-like stop
    return to_dot(out, params=params, inputs=inputs,
                  title=f"{model_name}: {block} ({type(names[block]).__name__})")


def graph_command(args) -> int:
    """``minivit graph MODEL --out FILE``."""
    check_graph_output(Path(args.out))     # before the model is built
    text = training_step_graph(args.model, batch_size=args.batch_size, block=args.block)
    out = write_graph(text, args.out, dpi=args.dpi)
    n_ops = text.count("shape=box")
    print(f"wrote {out} ({n_ops} ops)")
    return 0


def add_graph_parser(sub) -> None:
    p = sub.add_parser("graph", help="draw the autograd graph of one training step (DOT, or "
                                     "SVG/PNG/PDF with Graphviz)")
    p.add_argument("model", help="registry name, e.g. vit_cifar")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="FILE.dot (text) or FILE.svg/.png/.pdf (needs Graphviz's dot)")
    p.add_argument("--block", default=None, metavar="NAME",
                   help="only this sub-module's graph, e.g. blocks.0 (default: the whole step)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--dpi", type=int, default=None, help="resolution of a PNG (default 96)")

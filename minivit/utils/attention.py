"""Attention maps: ``capture_attention(model)`` and ``minivit attention RUN --image N``.

While the context is open, a forward-pre and a forward hook on every module keep the name of
the module that is running, and an observer in ``minivit/nn/functional/attention.py`` receives
the probabilities P = softmax(q k^T * scale + bias) of every attention call, recomputed on the
reference path from the call's own q, k and bias. Each is stored under the innermost running
module: ``blocks.0.attn`` (ViT, CeiT), ``lca.attn`` (CeiT's class-token attention over the
layers), ``stages.2.blocks.0.attn`` (BoTNet's MHSA), ``stages.0.blocks.0.attn_block.attn`` and
``...attn_grid.attn`` (MaxViT). MaxViT attends inside P x P windows (block attention) or
inside dilated G x G grids (grid attention); its maps are given over the whole feature map,
(B, heads, H*W, H*W) with pixels in row-major order, each query's probabilities on the keys
of its own window or grid and 0 elsewhere, so every map of every model has the same meaning.
The fast path is left alone: outside the context nothing is registered and attention runs as
always.

Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"): with
A_l the head-averaged attention of layer l, Â_l = (A_l + I) / 2 (the residual connection),
rows renormalised, the rollout is Â_L ... Â_1; its class-token row says how much each patch
flowed into the class token over all layers.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from ..autograd import backend


@contextlib.contextmanager
def capture_attention(model):
    """Collect the attention probabilities of every attention call inside ``model`` while the
    context is open: ``{module name: np.ndarray (B, heads, queries, keys)}``. Several forwards
    (or a module called twice) are concatenated along the first axis.

    >>> import minivit
    >>> from minivit.models import create_model
    >>> model = create_model("vit_cifar", num_classes=10, depth=2).eval()
    >>> with capture_attention(model) as maps, minivit.no_grad():
    ...     _ = model(minivit.randn(2, 3, 32, 32))
    >>> {name: p.shape for name, p in maps.items()}
    {'blocks.0.attn': (2, 3, 65, 65), 'blocks.1.attn': (2, 3, 65, 65)}
    >>> bool(np.allclose(maps["blocks.0.attn"].sum(axis=-1), 1, atol=1e-5))
    True
    """
    from ..nn.functional import attention as attn_f  # noqa: PLC0415

    maps: dict = {}
    parts: dict = {}
    running: list = []

    layouts: dict = {}     # MaxViT's partitioned attention: name -> (token index per window)

    def pre(mod, args):
        name = names[id(mod)]
        running.append(name)
        if hasattr(mod, "partition_block") and hasattr(mod, "partition_size"):
            layouts[f"{name}.attn" if name else "attn"] = _partition_index(mod, args[0].shape)

    def post(mod, args, out):
        running.pop()

    def observe(p):
        name = running[-1] if running else ""
        p = backend.as_numpy(p).astype(np.float32, copy=False)
        if name in layouts:
            p = _unpartition(p, layouts[name])
        parts.setdefault(name, []).append(p)
        chunks = parts[name]
        maps[name] = chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=0)

    names = {id(m): name for name, m in model.named_modules()}
    handles = []
    for _, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    attn_f.observers.append(observe)
    try:
        yield maps
    finally:
        attn_f.observers.remove(observe)
        for h in handles:
            h.remove()


def _partition_index(mod, shape) -> np.ndarray:
    """(windows, T): the row-major pixel index of each token of each window, found by sending
    a map of pixel indices through the module's own partition (``window_partition`` or
    ``grid_partition``)."""
    import minivit  # noqa: PLC0415
    from ..models.maxvit import grid_partition, window_partition  # noqa: PLC0415

    _, h, w, _ = shape
    index = minivit.tensor(np.arange(h * w, dtype=np.float64).reshape(1, h, w, 1))
    split = window_partition if mod.partition_block else grid_partition
    return split(index, mod.partition_size).numpy()[..., 0].astype(np.int64)


def _unpartition(p: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(B * windows, heads, T, T) per-window probabilities -> (B, heads, N, N) over all N
    pixels: query index[w, i] attends to key index[w, j] with p[b, w, :, i, j]; 0 elsewhere."""
    windows, t = index.shape
    b, heads = p.shape[0] // windows, p.shape[1]
    n = windows * t
    full = np.zeros((b, heads, n, n), np.float32)
    p = p.reshape(b, windows, heads, t, t)
    for w in range(windows):
        q, k = index[w][:, None], index[w][None, :]
        full[:, :, q, k] = p[:, w]
    return full


def attention_rollout(layers, residual: bool = True) -> np.ndarray:
    """The rollout of a list of attention maps, each (B, heads, N, N), first layer first:
    (B, N, N), row i = how much each token flowed into token i through all layers.

    >>> a = np.full((1, 2, 3, 3), 1 / 3)
    >>> attention_rollout([a, a])[0].round(3).tolist()[0]
    [0.5, 0.25, 0.25]
    """
    out = None
    for a in layers:
        a = np.asarray(a, dtype=np.float64).mean(axis=1)              # average the heads
        if residual:
            a = 0.5 * a + 0.5 * np.eye(a.shape[-1])
            a = a / a.sum(axis=-1, keepdims=True)
        out = a if out is None else a @ out
    if out is None:
        raise ValueError("attention_rollout: no attention maps given")
    return out


def _token_maps(model, maps: dict):
    """The per-layer maps of a ViT-family model: [(name, (B, heads, N, N))] of its encoder
    blocks, in order, each with a class token first and a square grid of patches."""
    blocks = [(n, p) for n, p in maps.items() if p.ndim == 4 and p.shape[-1] == p.shape[-2]
              and int(round(np.sqrt(p.shape[-1] - 1))) ** 2 == p.shape[-1] - 1
              and getattr(model, "cls_token", None) is not None]
    return blocks


def load_for_attention(source: str, dataset: str | None = None, seed: int = 0):
    """(model in eval mode, dataset, label): a run folder or checkpoint (its trained weights),
    or a registered model name (freshly initialised with ``seed``: attention before training).
    """
    import minivit  # noqa: PLC0415
    from ..data import load_dataset  # noqa: PLC0415
    from ..models import create_model, list_models  # noqa: PLC0415

    path = Path(source)
    if source in list_models():
        ds = load_dataset(dataset or "cifar10-subset")
        minivit.manual_seed(seed)
        model = create_model(source, num_classes=ds.num_classes)
        label = f"{source} (initialised, seed {seed})"
    elif path.exists():
        from ..train import TrainConfig, load_run_checkpoint  # noqa: PLC0415

        file = path / "last.npz" if path.is_dir() else path
        ckpt = load_run_checkpoint(file)
        cfg = TrainConfig.from_json(ckpt["config"])
        ds = load_dataset(dataset or cfg.dataset, cfg.data)
        model = create_model(cfg.model, num_classes=ds.num_classes, **cfg.model_args)
        load_run_checkpoint(file, model, cfg.model)
        label = f"{cfg.model} after {ckpt['epoch']} epochs"
    else:
        raise ValueError(f"{source!r} is neither a run folder, a checkpoint nor a model name "
                         f"(see `minivit models`)")
    return model.eval(), ds, label


def draw_attention(model, image: np.ndarray, title: str = "", class_names=None):
    """A ``matplotlib.figure.Figure``: the image, its attention rollout over it, and the class
    token's attention in each layer (head-averaged). ``image``: a CIFAR image as stored,
    (H, W, 3) uint8 (normalised here as the loaders do)."""
    import minivit  # noqa: PLC0415
    from ..data.transforms import to_float_nchw  # noqa: PLC0415

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError:
        raise RuntimeError('drawing attention maps needs matplotlib: pip install -e ".[plot]" '
                           'in your minivit clone (or pip install matplotlib)') from None
    x = to_float_nchw(np.asarray(image)[None])
    device = next(iter(model.parameters())).device
    xt = minivit.tensor(backend.to_device(x, device) if device != "cpu" else x)
    with capture_attention(model) as maps, minivit.no_grad():
        logits = backend.as_numpy(model(xt).data)[0]
    layers = _token_maps(model, maps)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no class-token attention over a square "
                         f"grid of patches; attention rollout is drawn for the ViT family "
                         f"(vit_cifar, ceit_cifar). capture_attention still works on it")
    n = layers[0][1].shape[-1] - 1
    g = int(round(np.sqrt(n)))
    rollout = attention_rollout([p for _, p in layers])[0, 0, 1:].reshape(g, g)
    rgb = np.asarray(image, dtype=np.float32) / 255.0
    h, w = rgb.shape[:2]
    cols = 2 + len(layers)
    fig = Figure(figsize=(1.9 * cols, 2.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, cols)
    pred = int(logits.argmax())
    name = class_names[pred] if class_names is not None else str(pred)
    axes[0].imshow(rgb, interpolation="nearest")
    axes[0].set_title(f"input\npredicted: {name}", fontsize=8)
    axes[1].imshow(rgb, interpolation="nearest")
    axes[1].imshow(rollout, cmap="inferno", alpha=0.6, extent=(0, w, h, 0),
                   interpolation="bilinear")
    axes[1].set_title("rollout\n(all layers)", fontsize=8)
    for ax, (lname, p) in zip(axes[2:], layers):
        cls_row = p[0].mean(axis=0)[0, 1:].reshape(g, g)
        ax.imshow(cls_row, cmap="viridis", interpolation="nearest")
        ax.set_title(f"{lname}\n[cls] -> patches", fontsize=7)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def attention_command(args) -> int:
    """``minivit attention RUN --image N --out maps.png``."""
    from ..checkpoint import atomic_write  # noqa: PLC0415
    from ..plot import FORMATS  # noqa: PLC0415

    out = Path(args.out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"--out {out}: unknown image format {out.suffix or '(none)'!r}; "
                         f"expected one of {', '.join('.' + f for f in FORMATS)}")
    model, ds, label = load_for_attention(args.run, args.dataset, args.seed)
    images = ds.x_train if args.train else ds.x_test
    if not 0 <= args.image < len(images):
        raise ValueError(f"--image {args.image} is out of range: the "
                         f"{'train' if args.train else 'test'} split has {len(images)} images "
                         f"(0 to {len(images) - 1})")
    labels = ds.y_train if args.train else ds.y_test
    truth = ds.class_names[int(labels[args.image])]
    fig = draw_attention(model, images[args.image], class_names=ds.class_names,
                         title=f"{label}: {'train' if args.train else 'test'} image "
                               f"{args.image} ({truth})")
    atomic_write(out, lambda f: fig.savefig(f, format=fmt, dpi=args.dpi))
    print(f"wrote {out}")
    return 0


def add_attention_parser(sub) -> None:
    p = sub.add_parser("attention", help="draw a CIFAR image with its attention rollout and "
                                         "per-layer attention maps (ViT family)")
    p.add_argument("run", help="a run folder or checkpoint (trained weights), or a model name "
                               "(freshly initialised: attention before training)")
    p.add_argument("--image", type=int, default=0, help="index in the test split (default 0)")
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.png, .svg or .pdf")
    p.add_argument("--dataset", default=None,
                   help="default: the run's dataset (cifar10-subset for a model name)")
    p.add_argument("--train", action="store_true", help="take the image from the train split")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed for a model name")
    p.add_argument("--dpi", type=int, default=100)

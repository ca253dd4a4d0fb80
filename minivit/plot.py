"""``minivit plot RUN [RUN ...]``: training curves of one or more runs (matplotlib, optional).

Per epoch from ``metrics.jsonl``: train and test loss, train and test accuracy; with
``steps=True`` also the per-step loss from ``steps.jsonl`` (``minivit train --log-interval
N``), with ``lr=True`` the learning-rate schedule, with ``grad_norms=True`` the gradient norm of
each top-level block. Runs are overlaid, one colour each (solid: train, dashed: test). The
epoch axis has whole-number ticks. The file's extension names the format (``.png``, ``.svg``,
``.pdf``). The figure is a ``matplotlib.figure.Figure`` drawn on its own canvas: pyplot and
the caller's backend are never touched.
"""
from __future__ import annotations

from pathlib import Path

from .checkpoint import atomic_write
from .runfolder import show

FORMATS = ("png", "svg", "pdf")


def read_metrics(run: str | Path) -> list[dict]:
    """The epochs of ``RUN/metrics.jsonl`` (a torn last line left out); a value written as
    ``null`` (a NaN) comes back as NaN, a gap in the curve."""
    from .utils.diagnostics import read_jsonl  # noqa: PLC0415

    rows = read_jsonl(Path(run) / "metrics.jsonl", f"no metrics log (is {show(run)} a run "
                                                   f"folder with at least one finished epoch?)")
    return [{k: float("nan") if v is None else v for k, v in r.items()} for r in rows]


def _read_steps(run: Path, needed: bool) -> list[dict]:
    from .utils.diagnostics import read_steps  # noqa: PLC0415

    if not needed:
        return []
    return read_steps(run)


def plot_runs(runs, output: str | Path, steps: bool = False, lr: bool = False,
              grad_norms: bool = False, labels=None, dpi: int = 100) -> Path:
    """Draw the curves of ``runs`` (run folders) into ``output``, in the format its extension
    names; return its path. The options are those of ``make_figure``.

    >>> import json, pathlib, tempfile
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (run / "metrics.jsonl").write_text("".join(json.dumps(dict(epoch=e, train_loss=2 / e,
    ...     test_loss=2.1 / e, train_acc=0.3 * e, test_acc=0.28 * e, lr=1e-3)) + "\\n" for e in (1, 2)))
    >>> out = plot_runs([run], run / "curves.svg")
    >>> out.read_text().lstrip().startswith("<?xml")
    True
    """
    output = Path(output)
    fmt = output.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"--output {output}: unknown image format {output.suffix or '(none)'!r}"
                         f"; expected one of {', '.join('.' + f for f in FORMATS)}")
    fig = make_figure(runs, steps=steps, lr=lr, grad_norms=grad_norms, labels=labels)
    atomic_write(output, lambda f: fig.savefig(f, format=fmt, dpi=dpi))
    return output


def make_figure(runs, steps: bool = False, lr: bool = False, grad_norms: bool = False,
                labels=None):
    """The ``matplotlib.figure.Figure`` of ``plot_runs`` (no pyplot): panels loss and
    accuracy per epoch, plus the per-step loss (``steps``), the learning rate (``lr``) and the
    gradient norm per block (``grad_norms``), the last two from ``steps.jsonl``.

    >>> import json, pathlib, tempfile
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (run / "metrics.jsonl").write_text(json.dumps(dict(epoch=1, train_loss=2,
    ...     test_loss=2.1, train_acc=0.3, test_acc=0.28, lr=1e-3)) + "\\n")
    >>> [ax.get_title() for ax in make_figure([run], lr=True).axes]
    ['loss', 'accuracy', 'learning-rate schedule']
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
        from matplotlib.ticker import MaxNLocator  # noqa: PLC0415
    except ImportError:
        raise RuntimeError('plotting needs matplotlib: pip install -e ".[plot]" in your minivit '
                           'clone (or pip install matplotlib)') from None
    runs = [Path(r) for r in runs]
    if not runs:
        raise ValueError("plot: name at least one run folder")
    labels = list(labels) if labels else [show(r.resolve().name) for r in runs]
    data = [(read_metrics(r), _read_steps(r, steps or grad_norms)) for r in runs]

    panels = ["loss", "accuracy"] + (["lr"] if lr else []) + (["grad"] if grad_norms else [])
    fig = Figure(figsize=(5 * len(panels), 4))
    FigureCanvasAgg(fig)
    axes = dict(zip(panels, fig.subplots(1, len(panels), squeeze=False)[0]))
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for (rows, step_rows), label, c in zip(data, labels, colors):
        epochs = [r["epoch"] for r in rows]
        if steps and step_rows:
            axes["loss"].plot([s["epoch"] for s in step_rows], [s["loss"] for s in step_rows],
                              color=c, alpha=0.35, lw=0.8)
        axes["loss"].plot(epochs, [r["train_loss"] for r in rows], "o-", color=c,
                          label=f"{label} train")
        axes["loss"].plot(epochs, [r["test_loss"] for r in rows], "s--", color=c,
                          label=f"{label} test")
        axes["accuracy"].plot(epochs, [100 * r["train_acc"] for r in rows], "o-", color=c,
                              label=f"{label} train")
        axes["accuracy"].plot(epochs, [100 * r["test_acc"] for r in rows], "s--", color=c,
                              label=f"{label} test")
        if lr:
            if step_rows:
                axes["lr"].plot([s["epoch"] for s in step_rows], [s["lr"] for s in step_rows],
                                "-", color=c, label=label)
            else:
                axes["lr"].plot(epochs, [r["lr"] for r in rows], "o-", color=c, label=label)
        if grad_norms and step_rows:
            names = list(step_rows[0]["grad_norm_blocks"])
            for j, name in enumerate(names):
                shade = 0.25 + 0.75 * j / max(len(names) - 1, 1)
                axes["grad"].plot([s["epoch"] for s in step_rows],
                                  [s["grad_norm_blocks"].get(name, float("nan"))
                                   for s in step_rows],
                                  color=c, alpha=shade, lw=1,
                                  label=name if len(runs) == 1 else f"{label} {name}")
    titles = {"loss": ("loss", "loss"), "accuracy": ("accuracy (%)", "accuracy"),
              "lr": ("learning rate", "learning-rate schedule"),
              "grad": ("gradient L2 norm", "gradient norm per block")}
    for name, ax in axes.items():
        ylabel, title = titles[name]
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        if name == "grad":
            ax.set_yscale("log")
            ax.legend(fontsize=6, ncol=2)
        else:
            ax.legend(fontsize=8)
    if len(runs) == 1:
        fig.suptitle(labels[0])
    fig.tight_layout()
    return fig


def plot_run(run: str | Path, output: str | Path | None = None) -> Path:
    """One run's loss and accuracy per epoch, by default into ``RUN/curves.png``."""
    return plot_runs([run], output or Path(run) / "curves.png")


def plot_command(args) -> int:
    """``minivit plot RUN [RUN ...]``."""
    output = args.output or Path(args.run[0]) / "curves.png"
    out = plot_runs(args.run, output, steps=args.steps, lr=args.lr, grad_norms=args.grad_norms,
                    dpi=args.dpi)
    print(f"wrote {show(out)}")
    return 0


def add_plot_parser(sub) -> None:
    p = sub.add_parser("plot", help="draw the curves of one or more runs (needs matplotlib)")
    p.add_argument("run", nargs="+", help="run folder(s); several are overlaid")
    p.add_argument("--output", "-o", default=None,
                   help="image file; .png, .svg or .pdf picks the format (default "
                        "FIRST_RUN/curves.png)")
    p.add_argument("--steps", action="store_true",
                   help="add the per-step loss from steps.jsonl (train --log-interval N)")
    p.add_argument("--lr", action="store_true", help="add the learning-rate schedule")
    p.add_argument("--grad-norms", action="store_true",
                   help="add the gradient norm of each block from steps.jsonl")
    p.add_argument("--dpi", type=int, default=100, help="resolution of a PNG (default 100)")

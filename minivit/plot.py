"""``minivit plot RUN``: the run's loss and accuracy curves as a PNG (matplotlib, optional)."""
from __future__ import annotations

from pathlib import Path

from .checkpoint import atomic_write
from .runfolder import METRICS, show
from .runfolder import read_metrics as _read


def read_metrics(run: str | Path) -> list[dict]:
    path = Path(run) / METRICS
    if not path.is_file():
        raise FileNotFoundError(f"{show(path)}: no metrics log (is {show(run)} a run folder "
                                f"with at least one finished epoch?)")
    return _read(path)


def _column(rows: list[dict], key: str, scale: float = 1.0) -> list[float]:
    """One metric per epoch; a missing or null value (NaN, written as null) as NaN."""
    return [scale * r[key] if isinstance(r.get(key), (int, float)) else float("nan")
            for r in rows]


def plot_run(run: str | Path, output: str | Path | None = None) -> Path:
    """Draw train/test loss and accuracy per epoch; return the PNG's path."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise RuntimeError("plotting needs matplotlib: pip install 'minivit[plot]'") from None
    rows = read_metrics(run)
    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, _column(rows, "train_loss"), "o-", label="train")
    ax1.plot(epochs, _column(rows, "test_loss"), "o-", label="test")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax2.plot(epochs, _column(rows, "train_acc", 100), "o-", label="train")
    ax2.plot(epochs, _column(rows, "test_acc", 100), "o-", label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(show(Path(run).name))
    fig.tight_layout()
    out = Path(output) if output else Path(run) / "curves.png"
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return out

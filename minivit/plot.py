"""``minivit plot RUN``: the run's loss and accuracy curves as a PNG (matplotlib, optional)."""
from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import atomic_write


def read_metrics(run: str | Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics log (is {run} a run folder with at least "
                                f"one finished epoch?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_run(run: str | Path, output: str | Path | None = None) -> Path:
    """Draw train/test loss and accuracy per epoch; return the PNG's path."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise RuntimeError('plotting needs matplotlib: pip install -e ".[plot]" in your minivit '
                           'clone (or pip install matplotlib)') from None
    rows = read_metrics(run)
    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    ax1.plot(epochs, [r["test_loss"] for r in rows], "o-", label="test")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax2.plot(epochs, [100 * r["train_acc"] for r in rows], "o-", label="train")
    ax2.plot(epochs, [100 * r["test_acc"] for r in rows], "o-", label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(Path(run).name)
    fig.tight_layout()
    out = Path(output) if output else Path(run) / "curves.png"
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return out

"""Pictures of a run: learning curves from metrics.csv, and attention maps of translations."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from nmt.files import atomic_write_bytes
from nmt.data.corpus import read_lines
from nmt.errors import NmtError


def pyplot():
    """matplotlib.pyplot, imported on first use: importing it builds a font cache on disk, which
    a training run points into its own directory first (MPLCONFIGDIR) so that it writes nowhere
    else."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot

    return matplotlib.pyplot


def png_bytes(figure) -> bytes:
    """Render a figure to PNG bytes and free it."""
    image = io.BytesIO()
    figure.savefig(image, format="png")
    pyplot().close(figure)
    return image.getvalue()


def plot_learning_curves(metrics_csv: Path, png: Path) -> None:
    """Training and dev loss (left axis) and dev BLEU (right axis) against updates."""
    train, valid = _curves(metrics_csv)
    figure, loss_axis = pyplot().subplots(figsize=(8, 4.5), dpi=100)
    if train:
        loss_axis.plot(
            *zip(*train), color="tab:blue", alpha=0.6, label="train loss (smoothed labels)"
        )
    if valid:
        steps, losses, bleus = zip(*valid)
        loss_axis.plot(steps, losses, "o-", color="tab:orange", label="dev loss")
        bleu_axis = loss_axis.twinx()
        bleu_axis.plot(steps, bleus, "s-", color="tab:green", label="dev BLEU (greedy)")
        bleu_axis.set_ylabel("BLEU")
        bleu_axis.legend(loc="upper right")
    loss_axis.set_xlabel("update")
    loss_axis.set_ylabel("cross-entropy per token")
    loss_axis.legend(loc="upper center")
    loss_axis.grid(alpha=0.3)
    figure.tight_layout()
    atomic_write_bytes(png, png_bytes(figure))


def _curves(metrics_csv: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float, float]]]:
    """(step, train loss) and (step, dev loss, dev BLEU) from a run's metrics.csv, which may
    have been edited or damaged since training wrote it."""
    train, valid = [], []
    reader = csv.DictReader(read_lines(metrics_csv))  # UTF-8 checked, line by line
    try:
        for row in reader:
            if row["kind"] == "train":
                train.append((int(row["step"]), float(row["loss"])))
            else:
                valid.append((int(row["step"]), float(row["dev_loss"]), float(row["dev_bleu"])))
    except KeyError as missing:
        raise NmtError(
            f"{metrics_csv}: no column {missing}; not a metrics.csv of nmt-train"
        ) from None
    except (TypeError, ValueError, csv.Error):  # a short row, or text for a number
        raise NmtError(
            f"{metrics_csv}:{reader.line_num}: not a row of nmt-train's metrics.csv"
        ) from None
    if not (train or valid):
        raise NmtError(f"{metrics_csv}: no rows yet; nothing to draw")
    return train, valid


def plot_attention(record: dict, png: Path, title: str = "") -> None:
    """A heatmap of one translation's attention: target pieces down, source pieces across.

    The figure grows with the sentence, so a 40-token sentence stays readable.
    """
    source, target = record["source"], record["target"]
    width = max(4.0, 0.32 * len(source) + 1.5)
    height = max(3.0, 0.32 * len(target) + 1.2)
    figure, axis = pyplot().subplots(figsize=(width, height), dpi=100)
    axis.imshow(record["attention"], cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
    axis.set_xticks(range(len(source)), source, rotation=90, fontsize=9)
    axis.set_yticks(range(len(target)), target, fontsize=9)
    axis.set_xlabel("source")
    axis.set_ylabel("output")
    if title:
        axis.set_title(title, fontsize=10)
    figure.tight_layout()
    atomic_write_bytes(png, png_bytes(figure))

"""Pictures of a run: learning curves from metrics.csv."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from nmt.checkpoint import atomic_write_bytes  # noqa: E402


def plot_learning_curves(metrics_csv: Path, png: Path) -> None:
    """Training and dev loss (left axis) and dev BLEU (right axis) against updates."""
    train, valid = [], []
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            (train if row["kind"] == "train" else valid).append(row)
    figure, loss_axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        loss_axis.plot([int(r["step"]) for r in train], [float(r["loss"]) for r in train],
                       color="tab:blue", alpha=0.6, label="train loss (smoothed labels)")
    if valid:
        steps = [int(r["step"]) for r in valid]
        loss_axis.plot(steps, [float(r["dev_loss"]) for r in valid], "o-", color="tab:orange",
                       label="dev loss")
        bleu_axis = loss_axis.twinx()
        bleu_axis.plot(steps, [float(r["dev_bleu"]) for r in valid], "s-", color="tab:green",
                       label="dev BLEU (greedy)")
        bleu_axis.set_ylabel("BLEU")
        bleu_axis.legend(loc="upper right")
    loss_axis.set_xlabel("update")
    loss_axis.set_ylabel("cross-entropy per token")
    loss_axis.legend(loc="upper center")
    loss_axis.grid(alpha=0.3)
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png")
    plt.close(figure)
    atomic_write_bytes(png, image.getvalue())

"""End-of-run plot: success rate and loss over iterations, from the run's metrics.csv."""

from __future__ import annotations

import csv
import math
from pathlib import Path


def _column(rows: list[dict[str, str]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key, "")
        try:
            y = float(v)
        except ValueError:
            continue
        if not math.isnan(y):
            xs.append(int(float(r["iteration"])))
            ys.append(y)
    return xs, ys


def plot_training_curves(csv_path: str | Path, out_path: str | Path) -> Path:
    """Write a PNG with train/eval success rate (top) and loss (bottom); matplotlib Agg, no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    csv_path, out_path = Path(csv_path), Path(out_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} does not exist: enable logging.csv=true to get a plot")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for key, label, style in (("train/success_rate", "train (rollouts)", "o-"), ("eval/success_rate", "eval (held-out)", "s-")):
        xs, ys = _column(rows, key)
        if xs:
            ax1.plot(xs, ys, style, label=label)
    ax1.set_ylabel("success rate")
    ax1.set_ylim(-0.05, 1.05)
    ax1.grid(alpha=0.3)
    ax1.legend(loc="best")
    xs, ys = _column(rows, "loss/total")
    if xs:
        ax2.plot(xs, ys, "o-", color="tab:red")
    ax2.set_ylabel("loss")
    ax2.set_xlabel("iteration")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path

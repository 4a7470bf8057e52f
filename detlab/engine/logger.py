"""Run logs: one JSON object per line in ``log.jsonl``, mirrored to TensorBoard, and the
PNGs of a run (first augmented training batch with its boxes, loss and mAP curves).

Plots use matplotlib's Agg canvas directly (no pyplot, no global backend switch), as :mod:`detlab.eval.report`.
"""

import json
import math
from pathlib import Path

import torch


class RunLogger:
    """``log(record)`` appends ``record`` (a flat dict with ``"kind"`` and ``"step"``) to ``out_dir/log.jsonl``
    and its numbers to TensorBoard (``out_dir/tensorboard``) as ``kind/key``."""

    def __init__(self, out_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter  # here: importing TensorBoard takes a second

        self.path = Path(out_dir) / "log.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def log(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "step":
                self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def figure(figsize=(6, 4)):
    """A matplotlib Figure on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_curves(history: list[dict], keys: list[str], path: str | Path, title: str, ylabel: str) -> None:
    """Line plot of ``record[key]`` over ``record["epoch"]`` for every epoch record holding it."""
    fig = figure()
    ax = fig.add_subplot()
    plotted = 0
    for key in keys:
        points = [(r["epoch"], r[key]) for r in history if r.get(key) is not None and math.isfinite(r[key])]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=key)
            plotted += 1
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if plotted:  # before the first evaluation the mAP plot is still empty
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no values yet", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path)


def draw_batch(images: list[torch.Tensor], targets: list[dict], class_names: list[str], path: str | Path,
               columns: int = 4) -> None:
    """A grid of images (Tensor[3, H, W] uint8 or float in [0, 1]) with their target boxes and class names."""
    rows = math.ceil(len(images) / columns)
    fig = figure((3 * columns, 3 * rows))
    for i, (image, target) in enumerate(zip(images, targets)):
        ax = fig.add_subplot(rows, columns, i + 1)
        draw_boxes(ax, image, target["boxes"], target["labels"], class_names)
    fig.tight_layout()
    fig.savefig(path)


def draw_boxes(ax, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, class_names: list[str],
               scores: torch.Tensor | None = None) -> None:
    """Draw ``image`` and its ``boxes`` (Tensor[N, 4] xyxy pixels) labelled with class names (and scores)."""
    from matplotlib.patches import Rectangle

    pixels = image if image.dtype == torch.uint8 else (image.clamp(0, 1) * 255).to(torch.uint8)
    ax.imshow(pixels.permute(1, 2, 0).cpu().numpy())
    ax.axis("off")
    for k, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist())):
        colour = f"C{label % 10}"
        ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, color=colour, linewidth=1.5))
        text = class_names[label] + ("" if scores is None else f" {float(scores[k]):.2f}")
        ax.text(box[0], box[1], text, color="white", fontsize=7, va="bottom",
                bbox=dict(facecolor=colour, alpha=0.7, pad=1, linewidth=0))

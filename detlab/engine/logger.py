"""Run logs: one JSON object per line in ``log.jsonl``, mirrored to TensorBoard, and the
PNGs of a run (first augmented training batch with its boxes, loss and mAP curves).

A run that starts after step ``s`` (a resumed run: its checkpoint's epoch; a new run: 0) drops what both logs hold
past ``s`` (written after that checkpoint by a run that was then killed, or by an earlier run in the folder), so
that each step is logged once: ``log.jsonl`` is rewritten without those records, and TensorBoard is told to purge
them (``SummaryWriter(purge_step=s + 1)``, which exists for exactly this).

Plots are drawn with :mod:`detlab.plotting` (a private Agg canvas, no global matplotlib state).
"""

import json
import math
from pathlib import Path

import torch

from detlab.engine.checkpoint import atomic_write
from detlab.plotting import draw_boxes, figure, save_figure


class RunLogger:
    """``log(record)`` appends ``record`` (a flat dict with ``"kind"`` and ``"step"``) to ``out_dir/log.jsonl``
    and its numbers to TensorBoard (``out_dir/tensorboard``) as ``kind/key``. Records past ``start_step`` already
    in either log are dropped first (see the module docstring); ``print_fn`` tells how many."""

    def __init__(self, out_dir: str | Path, start_step: int = 0, print_fn=print):
        from torch.utils.tensorboard import SummaryWriter  # here: importing TensorBoard takes a second

        self.path = Path(out_dir) / "log.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        dropped = self.drop_after(start_step)
        if dropped:
            print_fn(f"{self.path}: dropped {dropped} record{'s' * (dropped > 1)} past step {start_step} (of an "
                     f"interrupted or earlier run in this folder; TensorBoard hides them too)")
        self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=start_step + 1)

    def drop_after(self, step: int) -> int:
        """Rewrite ``log.jsonl`` (atomically) with only its records up to ``step``; returns how many lines it
        dropped (a line cut short by a kill is one)."""
        if not self.path.exists():
            return 0
        lines = self.path.read_text().splitlines()
        kept = [line for line, logged in zip(lines, map(_step, lines)) if logged is not None and logged <= step]
        if len(kept) < len(lines):
            atomic_write(self.path, lambda f: f.write("".join(f"{line}\n" for line in kept).encode()))
        return len(lines) - len(kept)

    def log(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "step":
                self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _step(line: str) -> int | None:
    """The ``"step"`` of a ``log.jsonl`` line; None for a line that is no record (cut short by a kill)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record.get("step") if isinstance(record, dict) and isinstance(record.get("step"), int) else None


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
    save_figure(fig, path)


def draw_batch(images: list[torch.Tensor], targets: list[dict], class_names: list[str], path: str | Path,
               columns: int = 4) -> None:
    """A grid of images (Tensor[3, H, W] uint8 or float in [0, 1]) with their target boxes and class names."""
    rows = math.ceil(len(images) / columns)
    fig = figure((3 * columns, 3 * rows))
    for i, (image, target) in enumerate(zip(images, targets)):
        ax = fig.add_subplot(rows, columns, i + 1)
        draw_boxes(ax, image, target["boxes"], target["labels"], class_names)
    fig.tight_layout()
    save_figure(fig, path)

"""Dataset statistics from targets alone (no image decoding): image and box counts, boxes per class, box sizes."""

from pathlib import Path

import numpy as np

from detlab.plotting import figure, save_figure


def dataset_stats(dataset) -> dict:
    """``{"images", "boxes", "empty_images", "boxes_per_class": {name: count}, "box_sizes": float64[N]}`` where a
    box's size is ``sqrt(w * h)`` in original pixels (COCO's small/medium/large split at 32 and 96).
    ``dataset`` needs ``target(i)`` and ``class_names`` (every detlab dataset has them)."""
    per_class = np.zeros(len(dataset.class_names), dtype=np.int64)
    sizes, empty = [], 0
    for index in range(len(dataset)):
        target = dataset.target(index)
        boxes = target["boxes"].double().numpy()
        per_class += np.bincount(target["labels"].numpy(), minlength=len(per_class))
        sizes.append(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        empty += len(boxes) == 0
    sizes = np.concatenate(sizes) if sizes else np.zeros(0)
    return {
        "images": len(dataset),
        "boxes": int(per_class.sum()),
        "empty_images": int(empty),
        "boxes_per_class": dict(zip(dataset.class_names, per_class.tolist())),
        "box_sizes": sizes,
    }


def plot_box_sizes(stats: dict, path, bins: int = 30) -> Path:
    """Histogram of ``stats["box_sizes"]`` (log-spaced bins, COCO's 32/96 thresholds marked) saved as a PNG."""
    sizes = stats["box_sizes"]
    fig = figure((7, 4))
    ax = fig.add_subplot()
    if len(sizes):
        edges = np.geomspace(max(sizes.min(), 1.0), max(sizes.max(), 2.0), bins + 1)
        ax.hist(np.clip(sizes, edges[0], None), bins=edges, color="tab:blue")
        ax.set_xscale("log")
    for threshold in (32, 96):
        ax.axvline(threshold, color="gray", linestyle="--", linewidth=1)
    ax.set_xlabel("box size sqrt(w*h) [pixels]  (dashed: COCO small/medium/large)")
    ax.set_ylabel("boxes")
    ax.set_title(f"{stats['boxes']} boxes in {stats['images']} images")
    fig.tight_layout()
    return save_figure(fig, path)


def format_stats(stats: dict) -> str:
    """A plain-text table of the counts."""
    lines = [f"images: {stats['images']}  boxes: {stats['boxes']}  images without boxes: {stats['empty_images']}"]
    width = max((len(name) for name in stats["boxes_per_class"]), default=5)
    lines += [f"  {name:<{width}}  {count}" for name, count in stats["boxes_per_class"].items()]
    return "\n".join(lines)

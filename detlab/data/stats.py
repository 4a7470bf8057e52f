"""Dataset statistics from targets alone (no image decoding): image and box counts, boxes per class, box sizes,
ignore regions and what the reader fixed; the one-paragraph scan summary printed when training starts."""

from collections import Counter
from pathlib import Path

import numpy as np
from torch.utils.data import Subset

from detlab.plotting import figure, save_figure


def dataset_stats(dataset) -> dict:
    """``{"images", "boxes", "empty_images", "boxes_per_class": {name: count}, "box_sizes": float64[N],
    "ignore_regions", "fixed": {problem: count}}`` where a box's size is ``sqrt(w * h)`` in original pixels (COCO's
    small/medium/large split at 32 and 96). ``dataset`` needs ``target(i)`` and ``class_names`` (every detlab
    dataset has them), or is a ``Subset`` of such a dataset."""
    base, indices = base_and_indices(dataset)
    per_class = np.zeros(len(base.class_names), dtype=np.int64)
    sizes, empty, ignore_regions = [], 0, 0
    for index in indices:
        target = base.target(index)
        boxes = target["boxes"].double().numpy()
        per_class += np.bincount(target["labels"].numpy(), minlength=len(per_class))
        sizes.append(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        empty += len(boxes) == 0
        ignore_regions += len(target.get("ignore_boxes", ()))
    sizes = np.concatenate(sizes) if sizes else np.zeros(0)
    return {
        "images": len(indices),
        "boxes": int(per_class.sum()),
        "empty_images": int(empty),
        "boxes_per_class": dict(zip(base.class_names, per_class.tolist())),
        "box_sizes": sizes,
        "ignore_regions": ignore_regions,
        "fixed": dict(getattr(base, "fixes", Counter())),
    }


def base_and_indices(dataset) -> tuple:
    """(the dataset under a ``Subset``, the indices into it) - the dataset itself and all its indices otherwise."""
    if isinstance(dataset, Subset):
        return dataset.dataset, list(dataset.indices)
    return dataset, list(range(len(dataset)))


def scan_summary(dataset, split: str) -> str:
    """One line per split as Ultralytics prints on load: ``train: 206 images (3 backgrounds), 641 boxes, 2 ignore
    regions; per class: cell 630, debris 11; no boxes: dust; fixed: 1 clipped`` (fixes as the reader's counted
    warning lists them)."""
    return summary_line(dataset_stats(dataset), split)


def summary_line(stats: dict, split: str) -> str:
    """The line of :func:`scan_summary` from :func:`dataset_stats`' figures."""
    line = f"{split}: {stats['images']} images ({stats['empty_images']} backgrounds), {stats['boxes']} boxes"
    if stats["ignore_regions"]:
        line += f", {stats['ignore_regions']} ignore regions"
    counts = stats["boxes_per_class"]
    line += "; per class: " + ", ".join(f"{name} {n}" for name, n in counts.items() if n)
    if not all(counts.values()):  # a class without boxes may be a misspelt data.classes entry: say which
        line += "; no boxes: " + ", ".join(name for name, n in counts.items() if not n)
    if stats["fixed"]:
        line += "; fixed: " + ", ".join(f"{n} {problem}" for problem, n in stats["fixed"].items())
    return line


def image_names(dataset) -> list[str]:
    """A name per image of ``dataset`` (or a ``Subset``): the reader's ``names[i]`` (VOC ``year/id``, flat VOC XML
    stem, YOLO path in the dataset) where it has them, else the image path."""
    base, indices = base_and_indices(dataset)
    names = getattr(base, "names", None)
    if names is None or len(names) != len(base):
        return [str(base.records[i].image_path) if hasattr(base, "records") else str(i) for i in indices]
    return ["/".join(names[i]) if isinstance(names[i], tuple) else str(names[i]) for i in indices]


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

"""Reports of evaluation results: printed tables, a JSON of all figures, PR curves as PNG.

Plots are drawn with :mod:`detlab.plotting` (a private Agg canvas, no global matplotlib state), so they work
headless and inside other programs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from detlab.plotting import figure, save_figure

from .coco import AREA_NAMES, REC_THRS, STAT_NAMES, CocoResult
from .voc import VocResult

_STAT_LABELS = [
    f"{'Average Precision  (AP)' if name.startswith('AP') else 'Average Recall     (AR)'} @[ IoU={iou:<9} | "
    f"area={area:>6s} | maxDets={dets:>3d} ]"
    for name, (iou, area, dets) in zip(
        STAT_NAMES,
        [("0.50:0.95", "all", 100), ("0.50", "all", 100), ("0.75", "all", 100)]
        + [("0.50:0.95", a, 100) for a in AREA_NAMES[1:]]
        + [("0.50:0.95", "all", d) for d in (1, 10, 100)]
        + [("0.50:0.95", a, 100) for a in AREA_NAMES[1:]],
    )
]


def _fmt(x) -> str:
    return "  -  " if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"


def format_coco(result: CocoResult) -> str:
    """pycocotools' 12 summary lines, then a per-class table (AP, AP50, AP75, number of ground truths)."""
    lines = [f" {label} = {value:0.3f}" for label, value in zip(_STAT_LABELS, result.stats)]
    figures = result.as_dict()["per_class"]
    width = max([len(f["name"]) for f in figures] + [5])
    lines += ["", f"{'class':<{width}}     AP   AP50   AP75  #gt"]
    lines += [
        f"{f['name']:<{width}}  {_fmt(f['AP'])}  {_fmt(f['AP50'])}  {_fmt(f['AP75'])}  {f['num_gt']:>4d}" for f in figures
    ]
    return "\n".join(lines)


def format_voc(result: VocResult) -> str:
    """Per-class AP (VOC07 11-point and all-point area) and mAP."""
    width = max([len(n) for n in result.class_names] + [5])
    lines = [f"VOC AP @ IoU > {result.iou_threshold:g}", f"{'class':<{width}}  AP(11pt)  AP(area)  #pos"]
    for name, a11, area, npos in zip(result.class_names, result.ap_11point, result.ap_area, result.num_positives):
        lines.append(f"{name:<{width}}     {_fmt(a11)}     {_fmt(area)}  {npos:>4d}")
    lines.append(f"{'mAP':<{width}}     {_fmt(result.map_11point)}     {_fmt(result.map_area)}")
    return "\n".join(lines)


def write_json(result: CocoResult | VocResult, path: str | Path) -> None:
    """All figures of ``result`` (its ``as_dict()``) as JSON; -1/NaN entries become null."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result.as_dict(), indent=1))


def pr_curves(result: CocoResult | VocResult) -> dict:
    """{label: (recall float64[N], precision float64[N])}: COCO's mean curves at IoU .50, .75 and .50:.95 (all
    areas, 100 dets), or VOC's curve of each class with positives."""
    if isinstance(result, CocoResult):
        return {label: (REC_THRS, result.pr_curve(iou)) for label, iou in (("IoU .50:.95", None), ("IoU .50", 0.5), ("IoU .75", 0.75))}
    return {
        f"{name} (AP {ap:.3f})": (rec, prec)
        for name, ap, rec, prec in zip(result.class_names, result.ap_area, result.recall, result.precision)
        if not np.isnan(ap)
    }


def plot_pr_curves(curves: dict, path: str | Path, title: str = "Precision-recall") -> None:
    """Draw {label: (recall, precision)} into one PNG (at most 20 curves, the first ones)."""
    fig = figure((6, 5))
    ax = fig.add_subplot()
    for label, (rec, prec) in list(curves.items())[:20]:
        ax.plot(rec, prec, label=label, linewidth=1.2)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7, loc="lower left")
    save_figure(fig, path)

"""pycocotools as the oracle: its stats, precision and recall for an annotation dict and a results list."""

import contextlib
import copy
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detlab.eval import coco_detections_from_results, coco_ground_truth_from_dict, evaluate_coco


def pycocotools_eval(gt: dict, results: list) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def detlab_eval(gt: dict, results: list):
    g = coco_ground_truth_from_dict(gt)
    return evaluate_coco(g, coco_detections_from_results(results, g))


def max_abs_diff(gt: dict, results: list) -> dict:
    """Max |ours - pycocotools| over the 12 stats, the precision and the recall arrays."""
    ref, ours = pycocotools_eval(gt, results), detlab_eval(gt, results)
    assert ours.precision.shape == ref.eval["precision"].shape
    return {
        "stats": float(np.abs(ours.stats - ref.stats).max()),
        "precision": float(np.abs(ours.precision - ref.eval["precision"]).max()),
        "recall": float(np.abs(ours.recall - ref.eval["recall"]).max()),
    }

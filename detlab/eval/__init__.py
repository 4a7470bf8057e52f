"""Detection evaluation: COCO (equal to pycocotools), Pascal VOC (devkit AP), reports.

Takes plain per-image dicts of tensors/arrays or COCO JSON (files are decoded straight into columns by
``cocojson``), never models or datasets (layering).
"""

from .coco import (
    STAT_NAMES,
    CocoDetections,
    CocoGroundTruth,
    CocoResult,
    coco_detections_from_columns,
    coco_detections_from_file,
    coco_detections_from_predictions,
    coco_detections_from_results,
    coco_ground_truth_from_columns,
    coco_ground_truth_from_dict,
    coco_ground_truth_from_file,
    coco_ground_truth_from_targets,
    coco_results_from_predictions,
    evaluate_coco,
    evaluate_coco_files,
    evaluate_coco_predictions,
    read_json,
)
from .cocojson import CocoAnnotationColumns, CocoResultColumns, read_coco_annotations, read_coco_results
from .report import format_coco, format_voc, plot_pr_curves, pr_curves, write_json
from .voc import VocResult, evaluate_voc, voc_ap

__all__ = [
    "STAT_NAMES",
    "CocoAnnotationColumns",
    "CocoDetections",
    "CocoGroundTruth",
    "CocoResult",
    "CocoResultColumns",
    "VocResult",
    "coco_detections_from_columns",
    "coco_detections_from_file",
    "coco_detections_from_predictions",
    "coco_detections_from_results",
    "coco_ground_truth_from_columns",
    "coco_ground_truth_from_dict",
    "coco_ground_truth_from_file",
    "coco_ground_truth_from_targets",
    "coco_results_from_predictions",
    "evaluate_coco",
    "evaluate_coco_files",
    "evaluate_coco_predictions",
    "evaluate_voc",
    "format_coco",
    "format_voc",
    "plot_pr_curves",
    "pr_curves",
    "read_coco_annotations",
    "read_coco_results",
    "read_json",
    "voc_ap",
    "write_json",
]

"""COCO bbox evaluation: the 12 standard stats and a per-class AP table, equal to pycocotools' ``COCOeval``.

Inputs are flat arrays (``CocoGroundTruth``, ``CocoDetections``) built from a COCO annotation/results JSON file
(decoded straight into columns by ``cocojson``), its parsed dicts, or a model run (per-image dicts of tensors).
pycocotools' semantics are kept exactly: detections sorted by score with a stable sort, ``maxDets`` applied per
image *and* per category, ground-truth area ranges on the annotation's ``area`` field, crowd regions matched by
intersection / detection area and any number of times, unmatched detections outside the area range ignored, -1
for categories without ground truth. A model run's
ignore regions (targets' ``ignore_boxes``) become crowd regions of every category, so they are scored exactly as
pycocotools scores them given as ``iscrowd`` annotations of each category, after the image's own annotations.

Instead of pycocotools' Python loops over (image, category, area range, threshold), the work is vectorised:
1. detections are sorted in the order ``accumulate()`` visits them (category, score, image, rank), with
   integer keys packed into one int64 and ``np.sort`` rather than successive stable argsorts;
2. the IoU of every (detection, ground truth) pair of the same image and category is computed in one go;
3. the greedy matching loops over detection rank only, each step handling all groups, area ranges and IoU
   thresholds at once;
4. precision is needed only at true positives and at the 101 recall thresholds, so accumulation works on the
   matched detections and counts the others with one cumulative sum per area range.
Arithmetic is done in the same order as pycocotools, so the figures are equal bit for bit in practice.
"""

from __future__ import annotations

import itertools
import json
import operator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detlab.data.errors import DataError

from .cocojson import CocoAnnotationColumns, CocoResultColumns, read_coco_annotations, read_coco_results
from .matching import as_numpy, group_pairs, pair_iou, stack_ignore_regions, stack_per_image, xyxy_to_xywh

# pycocotools' Params.setDetParams, built the same way (np.arange would give slightly different thresholds)
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_RANGES = np.array([[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=np.float64)
AREA_NAMES = ("all", "small", "medium", "large")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# (is AP, IoU threshold or None for the mean over all, area range, maxDets): pycocotools' _summarizeDets
STAT_SPECS = (
    (True, None, "all", 100), (True, 0.5, "all", 100), (True, 0.75, "all", 100),
    (True, None, "small", 100), (True, None, "medium", 100), (True, None, "large", 100),
    (False, None, "all", 1), (False, None, "all", 10), (False, None, "all", 100),
    (False, None, "small", 100), (False, None, "medium", 100), (False, None, "large", 100),
)  # fmt: skip


@dataclass
class CocoGroundTruth:
    """Ground truth of a dataset, one row per annotation in annotation order (the order breaks IoU ties).

    image (int64[G]): index into ``image_ids``; category (int64[G]): index into ``category_ids``;
    boxes_xywh (float64[G, 4]); area (float64[G]): the annotation's ``area`` (segment area in COCO), which
    decides the area range; iscrowd (bool[G]); image_ids (int64[I]) and category_ids (int64[K]): dataset ids,
    sorted; category_names (list of K str).
    """

    image: np.ndarray
    category: np.ndarray
    boxes_xywh: np.ndarray
    area: np.ndarray
    iscrowd: np.ndarray
    image_ids: np.ndarray
    category_ids: np.ndarray
    category_names: list


@dataclass
class CocoDetections:
    """Detections, one row each: image (int64[D]) and category (int64[D]) indices as in ``CocoGroundTruth``,
    boxes_xywh (float64[D, 4]), scores (float64[D])."""

    image: np.ndarray
    category: np.ndarray
    boxes_xywh: np.ndarray
    scores: np.ndarray

    def take(self, index: np.ndarray) -> "CocoDetections":
        # np.take on axis 0 gathers rows several times faster than fancy indexing of the 2-d boxes
        return CocoDetections(
            self.image[index], self.category[index], np.take(self.boxes_xywh, index, axis=0), self.scores[index]
        )


@dataclass
class CocoResult:
    """stats (float64[12], ``STAT_NAMES``); precision (float64[T, R, K, A, M]) and recall (float64[T, K, A, M])
    laid out as pycocotools' ``eval['precision']``/``eval['recall']``, -1 where a category has no ground truth;
    num_gt (int64[K]): non-crowd ground truths per category."""

    stats: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    num_gt: np.ndarray
    category_ids: np.ndarray
    category_names: list

    def per_class(self, iou: float | None = None) -> np.ndarray:
        """AP per category (float64[K]) over all areas, maxDets=100, at one IoU threshold or averaged; -1 when the
        category has no ground truth."""
        return np.array([_mean_valid(self._precision_at(iou)[:, :, k]) for k in range(len(self.category_ids))])

    def pr_curve(self, iou: float | None = None) -> np.ndarray:
        """Precision at ``REC_THRS`` (float64[R]), mean over categories with ground truth (all areas, 100 dets)."""
        s = self._precision_at(iou)  # [T, R, K]
        valid = s[:, :, self.num_gt > 0]
        return valid.mean(axis=(0, 2)) if valid.size else np.zeros(len(REC_THRS))

    def as_dict(self) -> dict:
        """All figures, JSON-ready; per-class AP is None for a category without ground truth."""
        per_class = {f"AP{'' if iou is None else int(round(iou * 100))}": self.per_class(iou) for iou in (None, 0.5, 0.75)}
        return {
            "stats": {name: float(v) for name, v in zip(STAT_NAMES, self.stats)},
            "per_class": [
                {"category_id": int(cid), "name": name, "num_gt": int(n)}
                | {key: (None if v[k] < 0 else float(v[k])) for key, v in per_class.items()}
                for k, (cid, name, n) in enumerate(zip(self.category_ids, self.category_names, self.num_gt))
            ],
            "pr_curves": {"recall": REC_THRS.tolist()}
            | {label: self.pr_curve(iou).tolist() for label, iou in (("AP", None), ("AP50", 0.5), ("AP75", 0.75))},
        }

    def _precision_at(self, iou: float | None) -> np.ndarray:
        s = self.precision[:, :, :, 0, MAX_DETS.index(100)]
        return s if iou is None else s[np.where(IOU_THRS == iou)[0]]


# ----------------------------------------------------------------------------------------------------------
# Inputs: COCO JSON and model outputs
# ----------------------------------------------------------------------------------------------------------


def read_json(path: str | Path, what: str):
    """Parsed JSON of ``path``; a ValueError naming the file when it cannot be read or parsed."""
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise DataError(f"{path}: cannot read the {what} file: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON in the {what} file: {e}") from None


def _column(records: list, field: str, dtype, source: str, kind: str, width: int | None = None) -> np.ndarray:
    """``records[i][field]`` for every record as an array (shape [N] or [N, width]).

    The fast path converts everything at once; only when that fails are records checked one by one, to name the
    first bad one in the error.
    """
    shape = (len(records),) if width is None else (len(records), width)
    try:
        values = map(operator.itemgetter(field), records)  # one pass in C, no list for scalar fields
        if width is not None:  # flat iteration is much faster than np.array on a list of lists
            values = list(values)
            if not (np.fromiter(map(len, values), dtype=np.int64, count=len(values)) == width).all():
                raise ValueError
            values = itertools.chain.from_iterable(values)
        values = np.fromiter(values, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
        if dtype is not np.float64 or np.isfinite(values).all():
            return values
    except (KeyError, TypeError, ValueError, IndexError):
        pass
    expected = "a finite number" if width is None else f"a list of {width} finite numbers"
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise DataError(f"{source}: {kind} #{i} must be a JSON object, got {str(r)[:60]}")
        if field not in r:
            raise DataError(f"{source}: {kind} #{i}: field '{field}' is missing")
        try:
            v = np.asarray(r[field], dtype=np.float64)
            ok = v.shape == shape[1:] and np.isfinite(v).all()
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise DataError(f"{source}: {kind} #{i}: field '{field}' must be {expected}, got {str(r[field])[:60]}")
    raise DataError(f"{source}: field '{field}' of the {kind}s cannot be read")  # not reached in practice


def _index_of(known: np.ndarray, values: np.ndarray, source: str, field: str, kind: str) -> np.ndarray:
    """Position of each of ``values`` in the sorted ids ``known``; ValueError if some are absent."""
    if len(known) and 0 <= known[0] and known[-1] < 4 * (len(known) + len(values)) + 1024:
        # dense non-negative ids (the usual case): a lookup table, much faster than a binary search per value;
        # the table's last slot (-1) answers every value outside 0..max id
        table = np.full(int(known[-1]) + 2, -1, dtype=np.int64)
        table[known] = np.arange(len(known))
        index = table[np.where((values >= 0) & (values <= known[-1]), values, len(table) - 1)]
        bad = index < 0
    else:
        index = np.minimum(np.searchsorted(known, values), max(len(known) - 1, 0))
        bad = (known[index] != values) if len(known) else np.ones(len(values), bool)
    if bad.any():
        examples = ", ".join(str(v) for v in np.unique(values[bad])[:5])
        raise DataError(
            f"{source}: field '{field}': {int(bad.sum())} {kind}(s) refer to ids absent from the annotations "
            f"(e.g. {examples}; the first is {kind} #{int(np.argmax(bad))})"
        )
    return index


def _records(data, key: str, source: str) -> list:
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise DataError(f"{source}: field '{key}' must be a list (is this a COCO annotation file?)")
    return items


def coco_ground_truth_from_dict(data: dict, source: str = "annotations") -> CocoGroundTruth:
    """COCO annotation dict (``images``, ``annotations``, ``categories``) -> ``CocoGroundTruth``.

    ``iscrowd`` defaults to 0 and ``area`` to the box area when absent (pycocotools requires both).
    """
    images = _records(data, "images", source)
    categories = _records(data, "categories", source)
    anns = data.get("annotations", []) if isinstance(data, dict) else []
    return _ground_truth(
        source,
        image_ids=_column(images, "id", np.int64, source, "image"),
        category_ids=_column(categories, "id", np.int64, source, "category"),
        category_names=[str(c.get("name", c["id"])) for c in categories],
        ann_image_id=_column(anns, "image_id", np.int64, source, "annotation"),
        ann_category_id=_column(anns, "category_id", np.int64, source, "annotation"),
        ann_boxes_xywh=_column(anns, "bbox", np.float64, source, "annotation", width=4),
        ann_area=np.array([a.get("area", np.nan) if isinstance(a, dict) else np.nan for a in anns], dtype=np.float64),
        ann_iscrowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
    )


def coco_ground_truth_from_columns(columns: CocoAnnotationColumns, source: str = "annotations") -> CocoGroundTruth:
    """An annotation file read by ``read_coco_annotations`` -> ``CocoGroundTruth``, as from its dict."""
    c = columns
    return _ground_truth(
        source, c.image_ids, c.category_ids, c.category_names, c.ann_image_id, c.ann_category_id, c.ann_boxes_xywh,
        c.ann_area, c.ann_iscrowd,
    )  # fmt: skip


def coco_ground_truth_from_file(path: str | Path) -> CocoGroundTruth:
    """COCO annotation JSON -> ``CocoGroundTruth``, decoded straight into columns (``cocojson``)."""
    return coco_ground_truth_from_columns(read_coco_annotations(path), source=str(path))


def _ground_truth(
    source, image_ids, category_ids, category_names, ann_image_id, ann_category_id, ann_boxes_xywh, ann_area,
    ann_iscrowd,
) -> CocoGroundTruth:  # fmt: skip
    """``CocoGroundTruth`` from the columns of ``CocoAnnotationColumns`` (file order, repeated ids allowed: the
    last name of a repeated category id wins); NaN areas become box areas."""
    names = dict(zip(category_ids.tolist(), category_names))
    image_ids, category_ids = np.unique(image_ids), np.unique(category_ids)
    boxes = ann_boxes_xywh
    return CocoGroundTruth(
        image=_index_of(image_ids, ann_image_id, source, "image_id", "annotation"),
        category=_index_of(category_ids, ann_category_id, source, "category_id", "annotation"),
        boxes_xywh=boxes,
        area=np.where(np.isnan(ann_area), boxes[:, 2] * boxes[:, 3], ann_area),
        iscrowd=ann_iscrowd,
        image_ids=image_ids,
        category_ids=category_ids,
        category_names=[names[c] for c in category_ids.tolist()],
    )


def coco_detections_from_results(results, gt: CocoGroundTruth, source: str = "results") -> CocoDetections:
    """COCO results list (dicts with image_id, category_id, bbox [x, y, w, h], score) -> ``CocoDetections``.

    Raises ValueError naming ``source`` and the field for anything pycocotools would choke on or silently drop:
    a non-list, a missing or malformed field, an image_id or category_id absent from the annotations.
    """
    if not isinstance(results, list):
        raise DataError(f"{source}: expected a JSON list of detections, got {type(results).__name__}")
    columns = CocoResultColumns(
        image_id=_column(results, "image_id", np.int64, source, "detection"),
        category_id=_column(results, "category_id", np.int64, source, "detection"),
        boxes_xywh=_column(results, "bbox", np.float64, source, "detection", width=4),
        scores=_column(results, "score", np.float64, source, "detection"),
    )
    return coco_detections_from_columns(columns, gt, source)


def coco_detections_from_columns(columns: CocoResultColumns, gt: CocoGroundTruth, source="results") -> CocoDetections:
    """A results file read by ``read_coco_results`` -> ``CocoDetections``; ValueError naming ``source`` and the
    field for an image_id or category_id absent from ``gt``."""
    return CocoDetections(
        image=_index_of(gt.image_ids, columns.image_id, source, "image_id", "detection"),
        category=_index_of(gt.category_ids, columns.category_id, source, "category_id", "detection"),
        boxes_xywh=columns.boxes_xywh,
        scores=columns.scores,
    )


def coco_detections_from_file(path: str | Path, gt: CocoGroundTruth) -> CocoDetections:
    """COCO results JSON -> ``CocoDetections`` against ``gt``, decoded straight into columns (``cocojson``)."""
    return coco_detections_from_columns(read_coco_results(path), gt, source=str(path))


def _labels(labels: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{what}: field 'labels' must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    return labels


def _box_area(target: dict) -> np.ndarray:
    boxes = xyxy_to_xywh(as_numpy(target["boxes"]))
    return boxes[:, 2] * boxes[:, 3]


def coco_ground_truth_from_targets(targets: list, num_classes: int, category_names=None) -> CocoGroundTruth:
    """Per-image target dicts -> ``CocoGroundTruth`` with image ids 0..I-1 and category ids 0..C-1.

    Each target: boxes (Tensor[M, 4]) xyxy pixels, labels (Tensor[M]) in 0..C-1, optionally iscrowd (Tensor[M]),
    area (Tensor[M], default: box area) and ignore_boxes (Tensor[K, 4] xyxy pixels): each ignore region becomes
    a crowd row of every category (area: the region's), after all the annotations.
    """
    defaults = {"iscrowd": lambda t: np.zeros(len(_box_area(t)), dtype=bool), "area": _box_area}
    image, col = stack_per_image(targets, ("boxes", "labels", "iscrowd", "area"), defaults, "target")
    region_image, regions = stack_ignore_regions(targets)
    # K regions x C categories, region by region: within one (image, category) the regions keep their order
    region_image, region_category = np.repeat(region_image, num_classes), np.tile(np.arange(num_classes), len(regions))
    region_xywh = np.repeat(xyxy_to_xywh(regions), num_classes, axis=0)
    boxes_xywh = np.concatenate([xyxy_to_xywh(col["boxes"]), region_xywh])
    return CocoGroundTruth(
        image=np.concatenate([image, region_image]),
        category=np.concatenate([_labels(col["labels"], num_classes, "targets"), region_category]),
        boxes_xywh=boxes_xywh,
        area=np.concatenate([col["area"].astype(np.float64), region_xywh[:, 2] * region_xywh[:, 3]]),
        iscrowd=np.concatenate([col["iscrowd"].astype(bool), np.ones(len(region_image), dtype=bool)]),
        image_ids=np.arange(len(targets)),
        category_ids=np.arange(num_classes),
        category_names=list(category_names) if category_names is not None else [str(c) for c in range(num_classes)],
    )


def coco_detections_from_predictions(predictions: list, num_classes: int) -> CocoDetections:
    """Per-image prediction dicts (boxes (Tensor[N, 4]) xyxy pixels, scores (Tensor[N]), labels (Tensor[N]) in
    0..C-1, as a torchvision-style detector returns them) -> ``CocoDetections``."""
    image, col = stack_per_image(predictions, ("boxes", "scores", "labels"), {}, "prediction")
    return CocoDetections(
        image=image,
        category=_labels(col["labels"], num_classes, "predictions"),
        boxes_xywh=xyxy_to_xywh(col["boxes"]),
        scores=col["scores"].astype(np.float64),
    )


def coco_results_from_predictions(predictions: list, image_ids, category_ids) -> list[dict]:
    """Predictions as a COCO results list (dataset ids restored from contiguous labels), for a results JSON."""
    dets = coco_detections_from_predictions(predictions, len(category_ids))
    image_ids, category_ids = np.asarray(image_ids), np.asarray(category_ids)
    return [
        {"image_id": int(i), "category_id": int(c), "bbox": b, "score": s}
        for i, c, b, s in zip(
            image_ids[dets.image], category_ids[dets.category], dets.boxes_xywh.tolist(), dets.scores.tolist()
        )
    ]


def evaluate_coco_files(ann_path: str | Path, results_path: str | Path) -> CocoResult:
    """Score a COCO results JSON against a COCO annotation JSON."""
    gt = coco_ground_truth_from_file(ann_path)
    return evaluate_coco(gt, coco_detections_from_file(results_path, gt))


def evaluate_coco_predictions(predictions: list, targets: list, num_classes: int, category_names=None) -> CocoResult:
    """Score a model run: per-image prediction and target dicts (see ``coco_*_from_*`` for their fields)."""
    gt = coco_ground_truth_from_targets(targets, num_classes, category_names)
    return evaluate_coco(gt, coco_detections_from_predictions(predictions, num_classes))


# ----------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------


def evaluate_coco(gt: CocoGroundTruth, dets: CocoDetections) -> CocoResult:
    """The 12 COCO bbox stats, precision and recall arrays, as pycocotools' evaluate/accumulate/summarize."""
    num_classes = len(gt.category_ids)
    dets, rank = _top_detections(dets, num_classes)
    gt_ignore = gt.iscrowd[None, :] | ~_in_range(gt.area)  # [A, G]
    npig = np.stack([np.bincount(gt.category[~ig], minlength=num_classes) for ig in gt_ignore])  # [A, K]
    a, t, det, is_tp = _match(gt, dets, rank, gt_ignore)
    det_in_area = _in_range(dets.boxes_xywh[:, 2] * dets.boxes_xywh[:, 3])  # pycocotools: area = w * h
    # a detection on an ignored gt and outside the area range changes no count: drop it
    useful = is_tp | det_in_area.ravel()[a * len(rank) + det]  # flat index: faster than [a, det]
    matches = a[useful], t[useful], det[useful], is_tp[useful]
    precision, recall = _accumulate(dets.category, rank, det_in_area, matches, npig)
    stats = np.array([_summarize(precision, recall, *spec) for spec in STAT_SPECS])
    return CocoResult(stats, precision, recall, npig[0], gt.category_ids, gt.category_names)


def _in_range(area: np.ndarray) -> np.ndarray:
    """bool[A, N]: area inside each area range, bounds included as in pycocotools."""
    return (area[None, :] >= AREA_RANGES[:, :1]) & (area[None, :] <= AREA_RANGES[:, 1:])


def _segment_first(keys: np.ndarray) -> np.ndarray:
    """For sorted ``keys`` (int64[N]), the index of the first element of each element's run of equal keys."""
    starts = np.ones(len(keys), dtype=bool)
    starts[1:] = keys[1:] != keys[:-1]
    return np.maximum.accumulate(np.where(starts, np.arange(len(keys)), 0))


def _stable_argsort(keys: np.ndarray) -> np.ndarray:
    """Stable argsort of non-negative integer keys, cast to the smallest dtype so numpy can use radix sort."""
    return np.argsort(keys.astype(np.min_scalar_type(max(int(keys.max(initial=0)), 1))), kind="stable")


def _lexsort_ints(columns: list, sizes: list) -> np.ndarray:
    """Stable lexicographic argsort of non-negative integer columns (int64[N] each, most significant first,
    ``columns[i] < sizes[i]``): ties keep their input order.

    When the columns and the row index fit together in 63 bits, they are packed into one int64 per row and
    sorted with ``np.sort``, which is vectorised (SIMD) and several times faster than a stable argsort - and the
    row index in the low bits makes the order stable. Otherwise, ``np.lexsort``.
    """
    n = len(columns[0]) if columns else 0
    bits = [max(int(size) - 1, 0).bit_length() for size in sizes]
    index_bits = max(n - 1, 0).bit_length()
    if sum(bits) + index_bits > 63:
        return np.lexsort([np.arange(n), *columns[::-1]])
    key = np.zeros(n, dtype=np.int64)
    for column, b in zip(columns, bits):
        key <<= b
        key |= column
    key <<= index_bits
    key |= np.arange(n)
    key.sort()
    key &= (1 << index_bits) - 1
    return key


def _dense_rank_descending(values: np.ndarray) -> tuple[np.ndarray, int]:
    """int64[N]: rank of each of ``values`` (float64[N]) among the distinct values, 0 for the largest, and the
    number of ranks. Equal values share a rank, as they tie in a comparison sort: -0.0 and 0.0, and NaNs, which
    come last as in pycocotools' ``argsort(-scores)``."""
    order = np.argsort(-values)
    descending = values[order]
    new = np.ones(len(values), dtype=bool)
    nan = np.isnan(descending)
    new[1:] = (descending[1:] != descending[:-1]) & ~(nan[1:] & nan[:-1])
    dense = np.cumsum(new) - 1
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = dense
    return rank, int(dense[-1]) + 1 if len(dense) else 0


def _top_detections(dets: CocoDetections, num_classes: int) -> tuple[CocoDetections, np.ndarray]:
    """Keep the ``MAX_DETS[-1]`` best detections per (image, category) and sort them in accumulation order.

    Returns the detections sorted by (category, score descending, image, input order) - the order in which
    pycocotools' accumulate() visits them: images concatenated in id order, each by score, then a stable sort
    by score - and rank (int64[D]), each detection's position by score within its (image, category), ties in
    input order (pycocotools sorts with the stable mergesort).
    """
    num = len(dets.scores)
    # scores replaced by their (descending) dense rank, so that every sort key is a small integer
    score_rank, num_scores = _dense_rank_descending(dets.scores)
    num_images = int(dets.image.max(initial=0)) + 1
    # by (image, category, score, input order): a group's detections come by rank
    order = _lexsort_ints([dets.image, dets.category, score_rank], [num_images, num_classes, num_scores])
    group = (dets.image * num_classes + dets.category)[order]
    rank = np.empty(num, dtype=np.int64)
    rank[order] = np.arange(num) - _segment_first(group)
    keep = np.flatnonzero(rank < MAX_DETS[-1])  # increasing, so input order is kept among ties below
    order = keep[
        _lexsort_ints(
            [dets.category[keep], score_rank[keep], dets.image[keep]], [num_classes, num_scores, num_images]
        )
    ]
    return dets.take(order), rank[order]


def _match(gt: CocoGroundTruth, dets: CocoDetections, rank: np.ndarray, gt_ignore: np.ndarray) -> tuple:
    """pycocotools' greedy matching (evaluateImg) for all (image, category) groups, area ranges, IoU thresholds.

    Args:
        rank (int64[D]): detection rank within its (image, category); detections of equal rank never compete.
        gt_ignore (bool[A, G]): crowd or outside the area range.
    Returns:
        The matches sorted by (area range, threshold, detection): area (int64[N]), threshold (int64[N]),
        detection (int64[N]), and is_tp (bool[N]): matched to a counted ground truth, rather than to an ignored
        one (which makes the detection ignored too).
    """
    num_classes, num_areas, num_thrs = len(gt.category_ids), len(AREA_RANGES), len(IOU_THRS)
    by_rank = _stable_argsort(rank)
    pair_det, pair_gt, _ = group_pairs((dets.image * num_classes + dets.category)[by_rank], gt.image * num_classes + gt.category)
    pair_det = by_rank[pair_det]
    det_boxes, gt_boxes = np.take(dets.boxes_xywh, pair_det, axis=0), np.take(gt.boxes_xywh, pair_gt, axis=0)
    iou = pair_iou(det_boxes, gt_boxes, gt.iscrowd[pair_gt])
    thresholds = np.minimum(IOU_THRS, 1 - 1e-10)  # as evaluateImg: iou = min([t, 1-1e-10])
    keep = iou >= thresholds.min()  # a pair below every threshold can never match
    pair_det, pair_gt, iou = pair_det[keep], pair_gt[keep], iou[keep]
    # the state is kept only for detections that have a candidate. Arrays below put the pair / detection / gt
    # axis first and (area range, threshold) last, so that each step's gathers and reductions work on
    # contiguous rows of A * T values.
    candidates, pair_cand = np.unique(pair_det, return_inverse=True)
    # [C, A, T]: 0 free, 1 TP, 2 on an ignored gt
    state = np.zeros((len(candidates), num_areas, num_thrs), dtype=np.int8)
    # One sortable key per (pair, area range) ranks the candidates of a detection as evaluateImg's loop does:
    # counted gts before ignored ones (it stops at the first ignored gt once it holds a counted match), then
    # higher IoU, then the later gt in annotation order (the loop replaces its best match on equal IoU).
    det_first = _segment_first(pair_det)
    offset = np.arange(len(pair_det)) - det_first
    width = int(offset.max(initial=0)) + 1
    _, iou_rank = np.unique(iou, return_inverse=True)
    levels = int(iou_rank.max(initial=0)) + 1
    pair_ignored = gt_ignore.T[pair_gt]  # [P, A], C-contiguous
    key = ((~pair_ignored).astype(np.int64) * levels + iou_rank[:, None]) * width + offset[:, None]
    key = key[:, :, None]  # [P, A, 1]
    passes = (iou[:, None] >= thresholds[None, :])[:, None, :]  # [P, 1, T]
    gt_taken = np.zeros((len(gt.image), num_areas * num_thrs), dtype=bool)  # [G, A * T]
    crowd = gt.iscrowd[:, None, None]
    num_at = num_areas * num_thrs  # (area range, threshold) combinations, flattened as a * T + t below
    bounds = np.searchsorted(rank[pair_det], np.arange(MAX_DETS[-1] + 1))
    for start, end in zip(bounds[:-1], bounds[1:]):  # detection rank r, each step for all groups at once
        if start == end:
            continue
        gts = pair_gt[start:end]
        free = ~gt_taken[gts].reshape(-1, num_areas, num_thrs) | crowd[gts]  # a crowd region absorbs any number
        cand = np.where(free & passes[start:end], key[start:end], -1).reshape(-1, num_at)  # [n, A * T]
        seg = np.flatnonzero(det_first[start:end] == np.arange(start, end))  # first pair of each detection
        best = _segment_max(cand, seg)  # [detections in the slice, A * T]
        # flat indices (ravel() is a view of these C-contiguous arrays): much faster than fancy indexing with
        # one index array per axis
        hit = np.flatnonzero(best >= 0)
        i, at = np.divmod(hit, num_at)
        win = start + seg[i] + best.ravel()[hit] % width  # the winning pair
        gt_taken.ravel()[pair_gt[win] * num_at + at] = True
        on_ignored = pair_ignored.ravel()[win * num_areas + at // num_thrs]
        state.ravel()[pair_cand[win] * num_at + at] = np.where(on_ignored, 2, 1)
    flat = state.reshape(-1, num_at).T.ravel()  # [A * T * C]: sorted by (area range, threshold, detection)
    hit = np.flatnonzero(flat)
    at, c = np.divmod(hit, len(candidates))
    a, t = np.divmod(at, num_thrs)
    return a, t, candidates[c], flat[hit] == 1


def _segment_max(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Row-wise max of ``values`` (int64[N, W]) over the runs of rows beginning at ``starts`` (int64[M],
    increasing, starts[0] == 0) -> int64[M, W].

    Same as ``np.maximum.reduceat(values, starts, axis=0)``, which costs a call per run; here runs are short
    and mostly of length one, so a loop over the position in the run (vectorised over runs) is much faster.
    """
    lengths = np.diff(starts, append=len(values))
    best = values[starts]
    for pos in range(1, int(lengths.max(initial=1))):
        longer = np.flatnonzero(lengths > pos)
        best[longer] = np.maximum(best[longer], values[starts[longer] + pos])
    return best


def _accumulate(category, rank, det_in_area, matches, npig) -> tuple[np.ndarray, np.ndarray]:
    """Precision (float64[T, R, K, A, M]) and recall (float64[T, K, A, M]) as pycocotools' accumulate().

    Args:
        category (int64[D]), rank (int64[D]): detections in accumulation order (``_top_detections``).
        det_in_area (bool[A, D]): detection area inside the area range.
        matches: (area, threshold, detection, is_tp) from ``_match``, without those that change no count.
        npig (int64[A, K]): counted ground truths.
    """
    num_thrs, num_rec, num_classes = len(IOU_THRS), len(REC_THRS), npig.shape[1]
    precision = np.empty((num_thrs, num_rec, num_classes, len(AREA_RANGES), len(MAX_DETS)))  # all set below
    recall = np.empty((num_thrs, num_classes, len(AREA_RANGES), len(MAX_DETS)))
    need = _needed_true_positives(npig)
    has_gt = npig > 0  # pycocotools skips a category with no counted gt, leaving -1
    class_start = np.searchsorted(category, np.arange(num_classes))
    for m, max_det in enumerate(MAX_DETS):
        kept = rank < max_det  # maxDets truncates per image and per category
        sel = kept[matches[2]]
        kept_matches = matches if sel.all() else tuple(x[sel] for x in matches)
        prec, n_tp = _precision_at_recall_thresholds(category, class_start, det_in_area & kept, *kept_matches, need)
        precision[..., m] = np.where(has_gt[:, None, :, None], prec, -1.0).transpose(1, 3, 2, 0)  # -> [T, R, K, A]
        recall[..., m] = np.where(has_gt[:, None, :], n_tp / np.maximum(npig, 1)[:, None, :], -1.0).transpose(1, 2, 0)
    return precision, recall


def _needed_true_positives(npig: np.ndarray) -> np.ndarray:
    """int64[A, K, R]: the fewest true positives c with c / npig >= each recall threshold, compared in float
    exactly as pycocotools' ``searchsorted(rc, recThrs, side='left')`` does on rc = tp / npig."""
    # searchsorted counts the c in 0..n with c / n < threshold; c / n rises with c, so that count is the first
    # c with c / n >= threshold: start from ceil(threshold * n) and correct the float rounding either way
    n = np.maximum(npig, 1)[..., None]
    need = np.clip(np.ceil(REC_THRS * n).astype(np.int64), 0, n + 1)
    while (fix := (need > 0) & ((need - 1) / n >= REC_THRS)).any():
        need -= fix
    while (fix := (need <= n) & (need / n < REC_THRS)).any():
        need += fix
    return np.where(npig[..., None] > 0, need, 0)


def _precision_at_recall_thresholds(category, class_start, counted_area, a, t, det, is_tp, need) -> tuple:
    """Interpolated precision at the recall thresholds for one maxDets setting.

    Args:
        category (int64[D]): sorted, detections in accumulation order; class_start (int64[K]): first of each.
        counted_area (bool[A, D]): detection kept by maxDets and inside the area range.
        a, t, det, is_tp ([N]): matches of kept detections sorted by (a, t, det), see ``_match``.
        need (int64[A, K, R]): from ``_needed_true_positives``.
    Returns:
        precision (float64[A, T, K, R]), number of true positives (int64[A, T, K]).

    pycocotools' precision envelope is a running max from the end, and pr only rises at a true positive, so
    the value at recall threshold r is the max of pr over true positives number need[r], need[r] + 1, ...
    Ignored detections (matched to an ignored gt, or unmatched outside the area range) only repeat the
    previous pr and drop out. pr at the j-th true positive is j / (fp + j + eps), where fp counts the unmatched
    in-area detections before it: in-area detections minus matched in-area ones, both counted by cumsums.
    Both are needed only at true positives; each running count is a global cumsum minus its value before the
    segment, a per-segment constant computed once per segment (no per-row segment bookkeeping).
    """
    num_areas, num_classes, num_rec = need.shape
    num_thrs = len(IOU_THRS)
    num_segments = num_areas * num_thrs * num_classes
    num_dets = counted_area.shape[1]
    # in_area_before[a * (D + 1) + i]: counted in-area detections among the first i, for area range a
    in_area_before = np.zeros((num_areas, num_dets + 1), dtype=np.int32 if num_dets < 2**31 else np.int64)
    np.cumsum(counted_area, axis=1, out=in_area_before[:, 1:])
    in_area_before = in_area_before.ravel()  # flat indices below: faster than indexing with [a, det]
    segment = (a * num_thrs + t) * num_classes + category[det]  # sorted: runs of one (area, threshold, category)
    matched = counted_area.ravel()[a * num_dets + det]  # bool[N]: the match is a counted in-area detection
    matched_so_far = np.cumsum(matched, dtype=np.int64)  # over all segments, inclusive
    # per segment: in-area detections before the first detection of its category (so that in_area_before minus
    # it counts those of the category only), minus matched_so_far before the segment's first match
    starts = np.flatnonzero(np.diff(segment, prepend=-1))
    first_a = a[starts]
    base = np.zeros(num_segments, dtype=np.int64)
    base[segment[starts]] = (
        in_area_before[first_a * (num_dets + 1) + class_start[category[det[starts]]]]
        - (matched_so_far[starts] - matched[starts])
    )
    # at the true positives only
    tp_rows = np.flatnonzero(is_tp)
    tp_segment = segment[tp_rows]
    n_tp = np.bincount(tp_segment, minlength=num_segments)
    tp = np.arange(1, len(tp_rows) + 1) - (np.cumsum(n_tp) - n_tp)[tp_segment]  # j-th in its segment
    in_area = in_area_before[a[tp_rows] * (num_dets + 1) + det[tp_rows] + 1]  # inclusive
    fp = in_area - matched_so_far[tp_rows] - base[tp_segment]
    tp, fp = tp.astype(np.float64), fp.astype(np.float64)
    pr = tp / (fp + tp + np.spacing(1))
    # max of pr over true positives [need - 1, n_tp) of each segment: block maxima between consecutive
    # thresholds with reduceat, then a running max over thresholds from the end. Only segments with a true
    # positive: the others have precision 0 (their pr values, none, cannot fall in another segment's blocks).
    rows = np.flatnonzero(n_tp)
    j = np.maximum(need, 1)[rows // (num_thrs * num_classes), rows % num_classes]  # [S', R]
    rows_tp = n_tp[rows, None]
    valid = j <= rows_tp  # else recall never reaches the threshold: precision 0
    start = (np.cumsum(n_tp) - n_tp)[rows, None] + np.minimum(j - 1, rows_tp)
    block = np.maximum.reduceat(np.append(pr, 0.0), start.ravel()).reshape(-1, num_rec)
    block[~valid] = 0.0
    prec = np.zeros((num_segments, num_rec))
    prec[rows] = np.maximum.accumulate(block[:, ::-1], axis=1)[:, ::-1]
    shape = (num_areas, num_thrs, num_classes)
    return prec.reshape(*shape, num_rec), n_tp.reshape(shape)


def _mean_valid(s: np.ndarray) -> float:
    """Mean over entries > -1, -1 if none (pycocotools' summarize)."""
    s = s[s > -1]
    return float(np.mean(s)) if s.size else -1.0


def _summarize(precision, recall, is_ap: bool, iou: float | None, area: str, max_dets: int) -> float:
    """One summary figure, indexing as pycocotools' _summarize does (so the mean sums in the same order)."""
    aind = [AREA_NAMES.index(area)]
    mind = [MAX_DETS.index(max_dets)]
    s = precision if is_ap else recall
    if iou is not None:
        s = s[np.where(iou == IOU_THRS)[0]]
    s = s[:, :, :, aind, mind] if is_ap else s[:, :, aind, mind]
    return _mean_valid(s)

"""ONNX translations of detlab's native ops for ``torch.onnx.export(..., dynamo=True, custom_translation_table=
TRANSLATIONS)``, in standard ONNX operators (opset 18) that onnxruntime and TensorRT run:

- ``detlab::nms``, ``detlab::batched_nms`` -> ``NonMaxSuppression`` (``nms``: the boxes as one batch of one class;
  ``batched_nms``: one batch per category, each holding that category's boxes; no score threshold, every box may
  be kept) then a descending sort of the kept scores (``TopK``), so the result is the op's: kept indices, best
  first. ONNX suppresses at IoU > threshold, as detlab and torchvision do.
- ``detlab::roi_align`` -> ``RoiAlign`` (opset 16+) with ``coordinate_transformation_mode = "half_pixel"`` for
  ``aligned=True`` and ``"output_half_pixel"`` for ``aligned=False``; a sampling ratio <= 0 (adaptive) is ONNX's 0.
- ``detlab::multiscale_roi_align`` -> per pyramid level, ``RoiAlign`` of the rois assigned to it, scattered into a
  zero result (rois without a level, level -1, stay zeros as in the op).

Imports onnxscript: only :mod:`detlab.deploy` imports this module, when exporting to ONNX.
"""

from onnxscript import opset18 as op

#: The opset the translations are written in.
OPSET = 18


def _per_category(boxes, scores, idxs):
    """The boxes laid out one NonMaxSuppression batch per category: boxes Tensor[categories, M, 4] and scores
    Tensor[categories, 1, M], M the most boxes of one category, the free slots scored -inf (below NonMaxSuppression's
    score threshold, the lowest float, so never kept); and per box its category, its slot and its index in the
    category order (``order``). The buffers grow as categories x M, not categories x N: with categories = image x
    class, a spread of the N scores over every category (one row each) would grow as the batch squared."""
    # by category, ascending; float32 holds the ids exactly below 2^24 (image x class of any real batch)
    _, order = op.TopK(op.Neg(op.Cast(idxs, to=1)), op.Shape(idxs), largest=1, sorted=1)
    category = op.Gather(idxs, order)
    count = op.Add(op.ReduceMax(op.Concat(idxs, op.Constant(value_ints=[-1]), axis=0), keepdims=1),
                   op.Constant(value_ints=[1]))  # [1]: categories 0..max
    ones = op.CastLike(op.Expand(op.Constant(value_int=1), op.Shape(idxs)), idxs)
    sizes = op.ScatterElements(op.Expand(op.CastLike(op.Constant(value_int=0), idxs), count), idxs, ones,
                               reduction="add")  # [categories]: boxes of each
    starts = op.CumSum(sizes, op.Constant(value_int=0), exclusive=1)
    position = op.Range(op.Constant(value_int=0), op.Squeeze(op.Shape(idxs)), op.Constant(value_int=1))
    slot = op.Sub(position, op.Gather(starts, category))  # the box's place among its category's
    most = op.ReduceMax(op.Concat(sizes, op.Constant(value_ints=[0]), axis=0), keepdims=1)  # [1]: M
    where = op.Concat(op.Unsqueeze(category, [1]), op.Unsqueeze(slot, [1]), axis=1)  # [N, 2]
    laid_boxes = op.ScatterND(op.Expand(op.CastLike(op.Constant(value_float=0.0), boxes),
                                        op.Concat(count, most, op.Constant(value_ints=[4]), axis=0)),
                              where, op.Gather(boxes, order))
    lowest = op.CastLike(op.Constant(value_float=float("-inf")), scores)
    laid_scores = op.ScatterND(op.Expand(lowest, op.Concat(count, most, axis=0)), where, op.Gather(scores, order))
    return laid_boxes, op.Unsqueeze(laid_scores, [1]), starts, order


def _nms(boxes, class_scores, scores, iou_threshold: float):
    """Kept box indices (Tensor[K] int64), best first, of NonMaxSuppression per class of ``class_scores``."""
    selected = op.NonMaxSuppression(op.Unsqueeze(boxes, [0]), class_scores, op.Shape(scores),
                                    op.Constant(value_float=float(iou_threshold)),
                                    op.Constant(value_float=-3.4e38))  # [K, 3]: batch, class, box
    kept = op.Reshape(op.Gather(selected, op.Constant(value_ints=[2]), axis=1), op.Constant(value_ints=[-1]))
    _, order = op.TopK(op.Gather(scores, kept), op.Shape(kept), largest=1, sorted=1)
    return op.Gather(kept, order)


def nms(boxes, scores, iou_threshold: float):
    """``detlab::nms(boxes [N, 4], scores [N], iou_threshold) -> Tensor[K] int64``."""
    return _nms(boxes, op.Unsqueeze(scores, [0, 1]), scores, iou_threshold)


def batched_nms(boxes, scores, idxs, iou_threshold: float):
    """``detlab::batched_nms(boxes [N, 4], scores [N], idxs [N], iou_threshold) -> Tensor[K] int64``:
    NonMaxSuppression with one batch per category (:func:`_per_category`), then the kept boxes best first."""
    idxs = op.Cast(idxs, to=7)
    laid_boxes, laid_scores, starts, order = _per_category(boxes, scores, idxs)
    selected = op.NonMaxSuppression(laid_boxes, laid_scores, op.Shape(scores),
                                    op.Constant(value_float=float(iou_threshold)),
                                    op.Constant(value_float=-3.4e38))  # [K, 3]: category, 0, slot
    category = op.Reshape(op.Gather(selected, op.Constant(value_ints=[0]), axis=1), op.Constant(value_ints=[-1]))
    slot = op.Reshape(op.Gather(selected, op.Constant(value_ints=[2]), axis=1), op.Constant(value_ints=[-1]))
    kept = op.Gather(order, op.Add(op.Gather(starts, category), slot))
    _, best = op.TopK(op.Gather(scores, kept), op.Shape(kept), largest=1, sorted=1)
    return op.Gather(kept, best)


def _roi_align(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int,
               aligned: bool):
    boxes = op.Slice(rois, op.Constant(value_ints=[1]), op.Constant(value_ints=[5]), op.Constant(value_ints=[1]))
    batch = op.Cast(op.Reshape(op.Slice(rois, op.Constant(value_ints=[0]), op.Constant(value_ints=[1]),
                                        op.Constant(value_ints=[1])), op.Constant(value_ints=[-1])), to=7)
    return op.RoiAlign(input, boxes, batch, mode="avg", output_height=pooled_height, output_width=pooled_width,
                       sampling_ratio=max(int(sampling_ratio), 0), spatial_scale=float(spatial_scale),
                       coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel")


def roi_align(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int,
              aligned: bool):
    """``detlab::roi_align(input [B, C, H, W], rois [K, 5], ...) -> Tensor[K, C, pooled_height, pooled_width]``."""
    return _roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)


def multiscale_roi_align(features, rois, levels, scales, pooled_height: int, pooled_width: int, sampling_ratio: int,
                         aligned: bool):
    """``detlab::multiscale_roi_align(features [B, C, H_l, W_l] per level, rois [K, 5], levels [K] or None, scales,
    ...) -> Tensor[K, C, pooled_height, pooled_width]``."""
    if levels is None:
        return _roi_align(features[0], rois, scales[0], pooled_height, pooled_width, sampling_ratio, aligned)
    channels = op.Slice(op.Shape(features[0]), op.Constant(value_ints=[1]), op.Constant(value_ints=[2]))
    shape = op.Concat(op.Shape(levels), channels, op.Constant(value_ints=[pooled_height, pooled_width]), axis=0)
    result = op.Expand(op.CastLike(op.Constant(value_float=0.0), features[0]), shape)
    for level, (feature, scale) in enumerate(zip(features, scales)):
        index = op.Transpose(op.NonZero(op.Equal(levels, op.CastLike(op.Constant(value_int=level), levels))))  # [k, 1]
        pooled = _roi_align(feature, op.GatherND(rois, index), scale, pooled_height, pooled_width, sampling_ratio,
                            aligned)
        result = op.ScatterND(result, index, pooled)
    return result


def translations() -> dict:
    """``{torch.ops.detlab.<op>.default: translation}`` for ``custom_translation_table``."""
    import torch

    ops = torch.ops.detlab
    return {ops.nms.default: nms, ops.batched_nms.default: batched_nms, ops.roi_align.default: roi_align,
            ops.multiscale_roi_align.default: multiscale_roi_align}

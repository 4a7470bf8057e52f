"""Autograd formulas and fake (meta) kernels of the native ops, registered once the compiled
library has defined their schemas. Fake kernels let torch.compile trace through the ops."""

from __future__ import annotations

import torch

ops = torch.ops.detlab


@torch.library.register_fake("detlab::nms")
def _nms_fake(boxes, scores, iou_threshold):
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.int64)


@torch.library.register_fake("detlab::batched_nms")
def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.int64)


@torch.library.register_fake("detlab::roi_align")
def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@torch.library.register_fake("detlab::_roi_align_backward")
def _roi_align_backward_fake(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                             height, width, sampling_ratio, aligned):
    return grad.new_empty((batch_size, channels, height, width))


@torch.library.register_fake("detlab::multiscale_roi_align")
def _multiscale_fake(features, rois, levels, scales, pooled_height, pooled_width, sampling_ratio, aligned):
    return features[0].new_empty((rois.shape[0], features[0].shape[1], pooled_height, pooled_width))


@torch.library.register_fake("detlab::_multiscale_roi_align_backward")
def _multiscale_backward_fake(grad, rois, levels, scales, pooled_height, pooled_width, batch_size, channels,
                              heights, widths, sampling_ratio, aligned):
    return [grad.new_empty((batch_size, channels, h, w)) for h, w in zip(heights, widths)]


def _roi_align_setup(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.params = (spatial_scale, pooled_height, pooled_width, *input.shape, sampling_ratio, aligned)


def _roi_align_backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    grad_input = ops._roi_align_backward(grad, rois, *ctx.params)
    return grad_input, None, None, None, None, None, None


def _multiscale_setup(ctx, inputs, output):
    features, rois, levels, scales, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois, levels)
    batch_size, channels = features[0].shape[:2]
    ctx.params = (scales, pooled_height, pooled_width, batch_size, channels,
                  [f.shape[2] for f in features], [f.shape[3] for f in features], sampling_ratio, aligned)


def _multiscale_backward(ctx, grad):
    rois, levels = ctx.saved_tensors
    grads = ops._multiscale_roi_align_backward(grad, rois, levels, *ctx.params)
    return list(grads), None, None, None, None, None, None, None


torch.library.register_autograd("detlab::roi_align", _roi_align_backward, setup_context=_roi_align_setup)
torch.library.register_autograd("detlab::multiscale_roi_align", _multiscale_backward, setup_context=_multiscale_setup)

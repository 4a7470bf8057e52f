"""The second stage of Faster R-CNN: pool each proposal's features, classify it and refine its box.

Poolers: :class:`FPNPooler` (``detlab.ops.multiscale_roi_align``, each proposal on the pyramid level its size
picks) and :class:`C4Pooler` (``detlab.ops.roi_align`` on the stride-16 map). Box heads: :class:`TwoMLPHead`
(FPN) and :class:`Res5Head` (C4: the backbone's own res5 stage, then average pooling). :class:`RoIHeads` samples
proposals, computes the cross-entropy and smooth-L1 losses and post-processes detections with
``detlab.ops.batched_nms``; step for step torchvision's ``RoIHeads``.

Internally class 0 is background and the C classes are 1..C; :class:`~detlab.models.faster_rcnn.FasterRCNN`
shifts labels at its boundary, so users only ever see 0..C-1.
"""

import torch
import torch.nn.functional as F
from torch import nn

from detlab.boxes import BoxCoder, aligned_iou, clip_boxes_to_image, remove_small_boxes
from detlab.heads.matching import (BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, BalancedSampler, Matcher,
                                   ignore_negatives_in_regions)
from detlab.heads.selection import best_per_image
from detlab.ops import batched_nms, multiscale_roi_align, roi_align

#: A detection narrower or lower than this (input pixels) is dropped before NMS.
MIN_DETECTION_SIZE = 1e-2


class FPNPooler(nn.Module):
    """RoIAlign of each proposal on one FPN level (FPN paper's rule: 224 pixels -> P4), ``output_size`` bins.

    ``forward``: pyramid levels (finest first), proposals per image Tensor[P_i, 4], image sizes -> Tensor[sum P_i,
    C, output_size, output_size].
    """

    def __init__(self, output_size: int = 7, sampling_ratio: int = 2):
        super().__init__()
        self.output_size, self.sampling_ratio = output_size, sampling_ratio

    def forward(self, features, proposals, image_sizes):
        return multiscale_roi_align(features, proposals, [tuple(map(int, s)) for s in image_sizes],
                                    self.output_size, self.sampling_ratio)


class C4Pooler(nn.Module):
    """RoIAlign on the one stride-``stride`` map (Detectron2's C4: 14 x 14 bins, adaptive sampling, aligned)."""

    def __init__(self, output_size: int = 14, sampling_ratio: int = 0, stride: int = 16, aligned: bool = True):
        super().__init__()
        self.output_size, self.sampling_ratio, self.stride, self.aligned = output_size, sampling_ratio, stride, aligned

    def forward(self, features, proposals, image_sizes):
        return roi_align(features[0], list(proposals), self.output_size, 1 / self.stride, self.sampling_ratio,
                         self.aligned)


class TwoMLPHead(nn.Module):
    """Flatten, then two fully connected layers with ReLU: Tensor[K, C, S, S] -> Tensor[K, representation_size]."""

    def __init__(self, in_features: int, representation_size: int = 1024):
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.out_features = representation_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class Res5Head(nn.Module):
    """The C4 box head: the backbone's ``c5`` stage (res5, stride 2) on the pooled 14 x 14 features, then the mean
    over the 7 x 7 result: Tensor[K, C4 channels, 14, 14] -> Tensor[K, C5 channels].

    The stage stays the backbone's (one copy of its weights, frozen and summarised with the backbone by
    :mod:`detlab.transfer`); this head only runs it.
    """

    def __init__(self, backbone):
        super().__init__()
        self._backbone = [backbone]  # a list: not a submodule, so the weights are not registered twice
        self.out_features = backbone.stage_channels["c5"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._backbone[0].stages["c5"](x).mean(dim=(2, 3))


class FastRCNNPredictor(nn.Module):
    """Class logits (background first) and per-class box deltas: Tensor[K, in] -> (Tensor[K, C + 1],
    Tensor[K, 4 * (C + 1)])."""

    def __init__(self, in_features: int, num_classes_with_background: int):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes_with_background)
        self.bbox_pred = nn.Linear(in_features, num_classes_with_background * 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(nn.Module):
    """Classify and refine proposals.

    Args:
        pooler, box_head, predictor: the modules above.
        fg_iou, bg_iou: a proposal is foreground at IoU >= ``fg_iou`` with a ground truth, background below
            ``bg_iou`` unless it lies mostly inside an ignore region (then ignored: never sampled, see
            :func:`~detlab.heads.matching.ignore_negatives_in_regions`).
        batch_size_per_image, positive_fraction: proposals sampled per image for the loss.
        score_threshold, nms_threshold, detections_per_image: inference post-processing (per-class NMS).
        box_weights: the :class:`BoxCoder` weights of the box deltas.
    """

    def __init__(self, pooler: nn.Module, box_head: nn.Module, predictor: FastRCNNPredictor, fg_iou: float = 0.5,
                 bg_iou: float = 0.5, batch_size_per_image: int = 512, positive_fraction: float = 0.25,
                 score_threshold: float = 0.05, nms_threshold: float = 0.5, detections_per_image: int = 100,
                 box_weights=(10.0, 10.0, 5.0, 5.0)):
        super().__init__()
        self.pooler, self.box_head, self.box_predictor = pooler, box_head, predictor
        self.matcher = Matcher(fg_iou, bg_iou, allow_low_quality_matches=False)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder(box_weights)
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.detections_per_image = detections_per_image

    def forward(self, features, proposals: list[torch.Tensor], image_sizes, targets: list[dict] | None = None):
        """
        Args:
            features: the levels the pooler reads; proposals: per image Tensor[P_i, 4] input pixels.
            targets: in training, per image ``{"boxes": Tensor[M_i, 4], "labels": Tensor[M_i] in 1..C}``,
                optionally ``"ignore_boxes"`` (Tensor[K_i, 4], the same pixels).

        Returns:
            train: ``{"loss_classifier", "loss_box_reg"}``; eval: per image ``{"boxes", "scores", "labels"}`` with
            labels in 1..C, boxes in input pixels.
        """
        if self.training:
            proposals, labels, box_targets = self.sample(proposals, targets)
        logits, deltas = self.box_predictor(self.box_head(self.pooler(features, proposals, image_sizes)))
        logits, deltas = logits.float(), deltas.float()  # box maths and losses in float32, also under autocast
        if self.training:
            return self.loss(logits, deltas, labels, box_targets)
        return self.postprocess(logits, deltas, proposals, image_sizes)

    def sample(self, proposals, targets):
        """Add the ground truths to the proposals, match, and sample; returns per image the sampled proposals,
        their labels (0 background) and the regression targets of each (zeros-matched for background)."""
        sampled_proposals, sampled_labels, box_targets = [], [], []
        all_labels, all_matches, all_proposals = [], [], []
        for boxes, target in zip(proposals, targets):
            truths = target["boxes"].to(boxes.dtype)
            boxes = torch.cat([boxes, truths])
            if truths.numel() == 0:
                matches = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
                labels = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
            else:
                raw = self.matcher(aligned_iou(truths[:, None], boxes[None], "iou", eps=0.0))
                matches = raw.clamp(min=0)
                labels = target["labels"][matches].to(torch.int64)
                labels[raw == BELOW_LOW_THRESHOLD] = 0
                labels[raw == BETWEEN_THRESHOLDS] = -1
            all_proposals.append(boxes)
            all_labels.append(ignore_negatives_in_regions(labels, boxes, target))
            all_matches.append(matches)
        positive, negative = self.sampler(all_labels)
        for boxes, labels, matches, pos, neg, target in zip(all_proposals, all_labels, all_matches, positive,
                                                             negative, targets):
            keep = torch.where(pos | neg)[0]
            truths = target["boxes"].to(boxes.dtype)
            if truths.numel() == 0:
                truths = boxes.new_zeros((1, 4))
            sampled_proposals.append(boxes[keep])
            sampled_labels.append(labels[keep])
            box_targets.append(self.box_coder.encode(truths[matches[keep]], boxes[keep]))
        return sampled_proposals, sampled_labels, box_targets

    def loss(self, logits, deltas, labels, box_targets) -> dict[str, torch.Tensor]:
        """Cross-entropy over the sampled proposals; smooth-L1 (beta 1/9) of the foreground ones' deltas of their
        class, summed and divided by the number sampled."""
        labels, box_targets = torch.cat(labels), torch.cat(box_targets)
        if labels.numel() == 0:  # every proposal ignored (images wholly inside ignore regions): nothing to learn
            zero = logits.sum() * 0.0 + deltas.sum() * 0.0
            return {"loss_classifier": zero, "loss_box_reg": zero}
        classifier_loss = F.cross_entropy(logits, labels)
        foreground = torch.where(labels > 0)[0]
        deltas = deltas.reshape(deltas.shape[0], -1, 4)
        box_loss = F.smooth_l1_loss(deltas[foreground, labels[foreground]], box_targets[foreground], beta=1 / 9,
                                    reduction="sum") / labels.numel()
        return {"loss_classifier": classifier_loss, "loss_box_reg": box_loss}

    def postprocess(self, logits, deltas, proposals, image_sizes) -> list[dict]:
        """Per image ``{"boxes", "scores", "labels"}``: :meth:`select_detections` of each image alone
        (:mod:`detlab.heads.selection`)."""
        counts = [len(p) for p in proposals]
        detections = []
        for image_logits, image_deltas, image_proposals, size in zip(logits.split(counts), deltas.split(counts),
                                                                     proposals, image_sizes):
            image = torch.zeros(len(image_proposals), dtype=torch.int64, device=logits.device)
            boxes, scores, labels, _ = self.select_detections(image_logits, image_deltas, image_proposals, image,
                                                              size, 1)
            detections.append({"boxes": boxes, "scores": scores, "labels": labels})
        return detections

    def select_detections(self, logits: torch.Tensor, deltas: torch.Tensor, proposals: torch.Tensor,
                          image: torch.Tensor, image_size, batch_size, nms=batched_nms
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every (proposal, class) pair scoring above the threshold, decoded and clipped, small boxes dropped,
        per-class NMS per image, the best ``detections_per_image`` of each image; all images at once
        (:mod:`detlab.heads.selection`, shared with the exported graph, which passes the bare
        ``torch.ops.detlab.batched_nms`` as ``nms``).

        Args:
            logits (Tensor[R, C + 1]), deltas (Tensor[R, 4 * (C + 1)]): the predictor's outputs (float32) for
                ``proposals`` (Tensor[R, 4]) of the images ``image`` (Tensor[R] int64).
            image_size: the images' (height, width); batch_size: B, the images are 0..B-1.
            nms: ``(boxes, scores, categories, iou_threshold) -> kept indices``, best first.

        Returns:
            boxes (Tensor[K, 4]), scores (Tensor[K]), labels (Tensor[K] int64, 1..C) and batch_index (Tensor[K]
            int64), grouped by image in batch order, best first within an image.
        """
        boxes = clip_boxes_to_image(self.box_coder.decode(deltas, proposals), image_size)  # [R, C + 1, 4]
        scores = F.softmax(logits, -1)
        classes = scores.shape[1]  # with the background, column 0, which is never a detection
        boxes, scores = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1)
        labels = torch.arange(scores.shape[0], device=scores.device) % (classes - 1) + 1
        image = image[:, None].expand(-1, classes - 1).reshape(-1)
        candidates = remove_small_boxes(boxes, MIN_DETECTION_SIZE)
        candidates = candidates[scores[candidates] > self.score_threshold]
        boxes, scores, labels, image = boxes[candidates], scores[candidates], labels[candidates], image[candidates]
        keep = nms(boxes, scores, image * classes + labels, self.nms_threshold)
        keep, batch_index = best_per_image(keep, image[keep], batch_size, self.detections_per_image)
        return boxes[keep], scores[keep], labels[keep], batch_index

"""Region Proposal Network (Ren et al. 2015): objectness and box deltas for every anchor, proposals by NMS, and
the loss on sampled anchors.

Step for step torchvision's ``RegionProposalNetwork`` (the same proposals from the same weights, the same sampled
anchors from the same seed), on detlab's box maths and :func:`detlab.ops.batched_nms`. Anchor order, here and in
the head outputs: level, then y, x, then anchor of the cell.
"""

import torch
import torch.nn.functional as F
from torch import nn

from detlab.boxes import BoxCoder, aligned_iou, clip_boxes_to_image, remove_small_boxes
from detlab.heads.anchors import AnchorGenerator
from detlab.heads.matching import (BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, BalancedSampler, Matcher,
                                   ignore_negatives_in_regions)
from detlab.heads.selection import at_most, best_per_image
from detlab.ops import batched_nms

#: A proposal narrower or lower than this (input pixels) is dropped before NMS.
MIN_PROPOSAL_SIZE = 1e-3


class RPNHead(nn.Module):
    """A 3x3 conv + ReLU shared by all levels, then per anchor an objectness logit and four box deltas.

    ``forward``: per level Tensor[B, C, H_l, W_l] -> (objectness per level Tensor[B, A, H_l, W_l], deltas per
    level Tensor[B, 4 * A, H_l, W_l]).
    """

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        objectness, deltas = [], []
        for feature in features:
            x = F.relu(self.conv(feature))
            objectness.append(self.cls_logits(x))
            deltas.append(self.bbox_pred(x))
        return objectness, deltas


def flatten_levels(per_level: list[torch.Tensor], values: int) -> torch.Tensor:
    """Head outputs Tensor[B, A * values, H_l, W_l] per level -> Tensor[B, sum_l H_l * W_l * A, values], in anchor
    order."""
    flat = []
    for x in per_level:
        b, channels, h, w = x.shape
        flat.append(x.view(b, channels // values, values, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, values))
    return torch.cat(flat, dim=1)


class RegionProposalNetwork(nn.Module):
    """Proposals from a feature pyramid, and in training the RPN's two losses.

    Args:
        anchor_generator, head: the anchors and the :class:`RPNHead` (one anchor count per location).
        fg_iou, bg_iou: an anchor is positive at IoU >= ``fg_iou`` with a ground truth (or as its best anchor),
            negative below ``bg_iou``, ignored between, and ignored as well when it would be negative but lies
            mostly inside an ignore region (:func:`~detlab.heads.matching.ignore_negatives_in_regions`).
        batch_size_per_image, positive_fraction: anchors sampled per image for the loss, at most that fraction
            positive.
        pre_nms_top_n, post_nms_top_n: ``{"training": n, "testing": n}``: the best anchors kept per level before
            NMS, and proposals kept per image after it.
        nms_threshold: IoU of the per-level NMS.
        score_threshold: proposals scoring (sigmoid) below it are dropped (torchvision's MobileNet models: 0.05).
    """

    def __init__(self, anchor_generator: AnchorGenerator, head: RPNHead, fg_iou: float = 0.7, bg_iou: float = 0.3,
                 batch_size_per_image: int = 256, positive_fraction: float = 0.5,
                 pre_nms_top_n: dict | None = None, post_nms_top_n: dict | None = None,
                 nms_threshold: float = 0.7, score_threshold: float = 0.0):
        super().__init__()
        self.anchor_generator, self.head = anchor_generator, head
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou, bg_iou, allow_low_quality_matches=True)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_top_n = pre_nms_top_n or {"training": 2000, "testing": 1000}
        self.post_nms_top_n = post_nms_top_n or {"training": 2000, "testing": 1000}
        self.nms_threshold, self.score_threshold = nms_threshold, score_threshold

    def forward(self, features: list[torch.Tensor], batch_shape: tuple[int, int], image_sizes: list[tuple[int, int]],
                targets: list[dict] | None = None) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """
        Args:
            features: the levels the RPN reads, Tensor[B, C, H_l, W_l] each.
            batch_shape: (height, width) of the padded batch; image_sizes: each image's (height, width) in it.
            targets: in training, per image ``{"boxes": Tensor[M_i, 4]}`` in input pixels, optionally
                ``"ignore_boxes"`` (Tensor[K_i, 4], the same pixels).

        Returns:
            proposals (per image Tensor[P_i, 4] xyxy input pixels, best first), and in training
            ``{"loss_objectness", "loss_rpn_box_reg"}`` (else empty).
        """
        objectness, deltas = self.predict(features)
        anchors = self.anchor_generator(batch_shape, [f.shape[-2:] for f in features], torch.float32,
                                        features[0].device)
        proposals = [self.select_proposals([o[i : i + 1].detach() for o in objectness], deltas[i : i + 1].detach(),
                                           anchors, size)[0]
                     for i, size in enumerate(image_sizes)]  # each image alone (detlab.heads.selection)
        if not self.training:
            return proposals, {}
        if targets is None:
            raise ValueError("the RPN needs targets in train mode")
        return proposals, self.loss(torch.cat(objectness, 1), deltas, anchors, targets)

    def predict(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The head's outputs in anchor order: objectness logits per level (Tensor[B, A_l]) and deltas (Tensor[B, A,
        4], A = sum A_l). Float32 also under autocast: half precision cannot hold 1333-pixel coordinates."""
        objectness, deltas = self.head(features)
        return [flatten_levels([o], 1).flatten(1).float() for o in objectness], flatten_levels(deltas, 4).float()

    def select_proposals(self, objectness: list[torch.Tensor], deltas: torch.Tensor, anchors: torch.Tensor,
                         image_size, nms=batched_nms) -> tuple[torch.Tensor, torch.Tensor]:
        """Per level and image the ``pre_nms_top_n`` best anchors, decoded, clipped, small boxes and low scores
        dropped, NMS per level and image, then the ``post_nms_top_n`` best of each image; all images at once
        (:mod:`detlab.heads.selection`, shared with the exported graph, which passes the bare
        ``torch.ops.detlab.batched_nms`` as ``nms``).

        Args:
            objectness, deltas: as :meth:`predict` gives them; anchors: Tensor[A, 4].
            image_size: the images' (height, width).
            nms: ``(boxes, scores, categories, iou_threshold) -> kept indices``, best first.

        Returns:
            proposals (Tensor[R, 4] xyxy input pixels) and their images (Tensor[R] int64), grouped by image in
            batch order, best first within an image.
        """
        mode = "training" if self.training else "testing"
        top, levels, offset = [], [], 0
        for level, scores in enumerate(objectness):
            top.append(scores.topk(at_most(scores.shape[1], self.pre_nms_top_n[mode]), dim=1).indices + offset)
            levels.append(torch.full_like(top[-1], level))
            offset = offset + scores.shape[1]
        top, levels = torch.cat(top, 1), torch.cat(levels, 1)  # [B, K]
        rows = torch.arange(top.shape[0], device=top.device)[:, None]
        scores = torch.sigmoid(torch.cat(objectness, 1)[rows, top]).flatten()
        # decoding is per box: only the anchors that can become proposals need it (torchvision decodes them all)
        boxes = self.box_coder.decode(deltas[rows, top].reshape(-1, 4), anchors[top].reshape(-1, 4)).view(-1, 4)
        image = rows.expand_as(top).flatten()
        boxes = clip_boxes_to_image(boxes, image_size)
        candidates = remove_small_boxes(boxes, MIN_PROPOSAL_SIZE)
        if self.score_threshold > 0:
            candidates = candidates[scores[candidates] >= self.score_threshold]
        boxes, scores, image = boxes[candidates], scores[candidates], image[candidates]
        keep = nms(boxes, scores, image * len(objectness) + levels.flatten()[candidates], self.nms_threshold)
        keep, batch_index = best_per_image(keep, image[keep], top.shape[0], self.post_nms_top_n[mode])
        return boxes[keep], batch_index

    def assign(self, anchors: torch.Tensor, targets: list[dict]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per image: anchor labels Tensor[A] float (1 positive, 0 negative, -1 ignored) and the ground-truth box
        of each anchor Tensor[A, 4] (any box for non-positives)."""
        labels, matched = [], []
        for target in targets:
            truths = target["boxes"]
            if truths.numel() == 0:  # an image without objects: every anchor is a negative
                label = anchors.new_zeros(anchors.shape[0])
                matched.append(torch.zeros_like(anchors))
            else:
                matches = self.matcher(aligned_iou(truths[:, None], anchors[None], "iou", eps=0.0))
                matched.append(truths[matches.clamp(min=0)])
                label = (matches >= 0).to(anchors.dtype)
                label[matches == BELOW_LOW_THRESHOLD] = 0.0
                label[matches == BETWEEN_THRESHOLDS] = -1.0
            labels.append(ignore_negatives_in_regions(label, anchors, target))
        return labels, matched

    def loss(self, objectness: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor, targets: list[dict]
             ) -> dict[str, torch.Tensor]:
        """Binary cross-entropy of the objectness and smooth-L1 (beta 1/9) of the positives' deltas, both over the
        sampled anchors (the box loss summed, divided by the number sampled)."""
        labels, matched = self.assign(anchors, targets)
        positive, negative = self.sampler(labels)
        positive = torch.where(torch.cat(positive))[0]
        negative = torch.where(torch.cat(negative))[0]
        sampled = torch.cat([positive, negative])
        if sampled.numel() == 0:  # every anchor ignored (images wholly inside ignore regions): nothing to learn
            zero = objectness.sum() * 0.0 + deltas.sum() * 0.0
            return {"loss_objectness": zero, "loss_rpn_box_reg": zero}
        labels = torch.cat(labels)
        count = anchors.shape[0]
        # only the sampled positives need regression targets: encode those, not every anchor
        image, anchor = positive // count, positive % count
        truths = torch.stack(matched)[image, anchor]
        box_targets = self.box_coder.encode(truths, anchors[anchor])
        box_loss = F.smooth_l1_loss(deltas.reshape(-1, 4)[positive], box_targets, beta=1 / 9,
                                    reduction="sum") / sampled.numel()
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled])
        return {"loss_objectness": objectness_loss, "loss_rpn_box_reg": box_loss}

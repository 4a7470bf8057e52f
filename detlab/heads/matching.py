"""Target assignment of two-stage detectors: a :class:`Matcher` pairs each anchor or proposal with a ground truth
by IoU, a :class:`BalancedSampler` picks the positives and negatives a loss is computed on.

Both follow torchvision's ``Matcher`` / ``BalancedPositiveNegativeSampler`` step for step (the sampler draws with
``torch.randperm`` in the same order), so with the same seed they pick the same anchors and proposals.

Ignore regions (``target["ignore_boxes"]``): :func:`ignore_negatives_in_regions` turns the negatives lying mostly
inside one (intersection over the element's own area >= :data:`detlab.boxes.MOSTLY_INSIDE`, MMDetection's
``MaxIoUAssigner(ignore_iof_thr=...)`` with its default ``ignore_wrt_candidates``) into ignored elements, which
the sampler never draws. Positives stay positives (MMDetection drops them too; here a ground truth inside a region
is still a real, annotated object), and ignore regions are never matched: they are not ground truth. Without
regions the labels are untouched, so the sampler's random draws are torchvision's.
"""

import torch

from detlab.boxes import mostly_inside

#: ``Matcher`` results for an element matched to no ground truth.
BELOW_LOW_THRESHOLD = -1  # IoU < low threshold: background
BETWEEN_THRESHOLDS = -2  # low <= IoU < high: ignored


class Matcher:
    """Each element (anchor, proposal) gets the index of its best ground truth when their IoU is >= ``high``,
    ``BETWEEN_THRESHOLDS`` when it is in [low, high), ``BELOW_LOW_THRESHOLD`` below ``low``.

    With ``allow_low_quality_matches`` every ground truth also keeps the elements it overlaps most (ties included),
    whatever the IoU, so that no object goes without a positive (the RPN's rule).
    """

    def __init__(self, high: float, low: float, allow_low_quality_matches: bool = False):
        if low > high:
            raise ValueError(f"matcher: the background IoU {low} must not exceed the foreground IoU {high}")
        self.high, self.low, self.allow_low_quality_matches = high, low, allow_low_quality_matches

    def __call__(self, iou: torch.Tensor) -> torch.Tensor:
        """iou (Tensor[M ground truths, N elements], M, N >= 1) -> Tensor[N] int64: matched index or a negative
        code."""
        best, matches = iou.max(dim=0)
        all_matches = matches.clone() if self.allow_low_quality_matches else None
        matches[best < self.low] = BELOW_LOW_THRESHOLD
        matches[(best >= self.low) & (best < self.high)] = BETWEEN_THRESHOLDS
        if all_matches is not None:
            best_per_truth = iou.max(dim=1).values
            elements = torch.where(iou == best_per_truth[:, None])[1]
            matches[elements] = all_matches[elements]
        return matches


def ignore_negatives_in_regions(labels: torch.Tensor, boxes: torch.Tensor, target: dict) -> torch.Tensor:
    """labels (Tensor[N], any dtype: >= 1 positive, 0 negative, -1 ignored) of ``boxes`` (Tensor[N, 4], anchors or
    proposals) -> the labels with every negative mostly inside one of ``target["ignore_boxes"]`` (Tensor[K, 4], the
    same pixels; absent or empty: none) set to -1."""
    regions = target.get("ignore_boxes")
    if regions is None or len(regions) == 0:
        return labels
    return labels.masked_fill((labels == 0) & mostly_inside(boxes, regions), -1)


class BalancedSampler:
    """Per image, up to ``batch_size_per_image`` elements of which at most ``positive_fraction`` positive, the
    rest negative, drawn at random; ignored elements are never drawn."""

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction

    def __call__(self, labels: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """labels: per image Tensor[N_i] (>= 1 positive, 0 negative, -1 ignored) -> (positive, negative) masks,
        per image Tensor[N_i] bool."""
        positives, negatives = [], []
        for labels_of_image in labels:
            positive = torch.where(labels_of_image >= 1)[0]
            negative = torch.where(labels_of_image == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            chosen_pos = positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]]
            chosen_neg = negative[torch.randperm(negative.numel(), device=negative.device)[:num_neg]]
            pos_mask = torch.zeros_like(labels_of_image, dtype=torch.bool)
            neg_mask = torch.zeros_like(labels_of_image, dtype=torch.bool)
            pos_mask[chosen_pos] = True
            neg_mask[chosen_neg] = True
            positives.append(pos_mask)
            negatives.append(neg_mask)
        return positives, negatives

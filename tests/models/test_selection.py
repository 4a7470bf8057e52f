"""The batched per-image selection that the eager models (one image at a time) and the exported graphs (the whole
batch) share: checked against a plain per-image reference."""

import pytest
import torch
import torchvision

from detlab.heads.selection import at_most, best_per_image
from detlab.heads.yolo import select_detections


def test_best_per_image_keeps_each_images_first_entries_grouped_in_batch_order():
    images = torch.tensor([2, 0, 2, 1, 0, 2, 2])  # candidates best first, the images interleaved; image 3 has none
    order = torch.arange(10, 17)
    kept, kept_images = best_per_image(order, images, 4, limit=2)
    assert kept.tolist() == [11, 14, 13, 10, 12] and kept_images.tolist() == [0, 0, 1, 2, 2]
    kept, kept_images = best_per_image(order, images, 4, limit=10)  # a limit above every count keeps them all
    assert kept.tolist() == [11, 14, 13, 10, 12, 15, 16] and kept_images.tolist() == [0, 0, 1, 2, 2, 2, 2]
    kept, kept_images = best_per_image(order[:0], images[:0], 4, limit=2)
    assert kept.numel() == 0 and kept_images.numel() == 0
    one = torch.zeros(5, dtype=torch.int64)  # a batch of one (the eager models): the first `limit`
    kept, kept_images = best_per_image(order[:5], one, 1, limit=3)
    assert kept.tolist() == [10, 11, 12] and kept_images.tolist() == [0, 0, 0]
    assert torch.equal(best_per_image(order[:5], one, torch.tensor(1), limit=3)[0], kept)  # a traced size: the table


def test_at_most_keeps_an_int_an_int_and_a_tensor_a_tensor():
    assert at_most(5, 3) == 3 and at_most(2, 3) == 2
    assert torch.equal(at_most(torch.tensor(5), 3), torch.tensor(3))


def reference_yolo_selection(boxes, scores, score_threshold, nms_threshold, max_detections, pre_nms_top_k):
    """Each image on its own: the pairs above the threshold, the best pre_nms_top_k of them, torchvision's
    per-class NMS, the best max_detections."""
    results = []
    for image_boxes, image_scores in zip(boxes, scores):
        flat = image_scores.flatten()
        candidates = (flat > score_threshold).nonzero().squeeze(1)
        candidates = candidates[flat[candidates].argsort(descending=True)[:pre_nms_top_k]]
        box, label = candidates // scores.shape[2], candidates % scores.shape[2]
        keep = torchvision.ops.batched_nms(image_boxes[box], flat[candidates], label, nms_threshold)[:max_detections]
        results.append((image_boxes[box[keep]], flat[candidates[keep]], label[keep]))
    return results


@pytest.mark.parametrize("pre_nms_top_k, max_detections", [(1000, 100), (40, 100), (1000, 7)])
def test_yolo_selection_of_a_batch_equals_each_image_on_its_own(pre_nms_top_k, max_detections):
    generator = torch.Generator().manual_seed(0)
    centres = torch.rand(3, 200, 2, generator=generator) * 100
    sizes = torch.rand(3, 200, 2, generator=generator) * 30 + 2
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], -1)  # [B, N, 4], many overlaps
    scores = torch.rand(3, 200, 4, generator=generator)  # distinct scores: no tie can reorder anything
    scores[1] *= 0.05  # image 1: nothing above the threshold
    got = select_detections(boxes, scores, 0.3, 0.5, max_detections, pre_nms_top_k)
    expected = reference_yolo_selection(boxes, scores, 0.3, 0.5, max_detections, pre_nms_top_k)
    assert [len(e[0]) for e in expected][1] == 0 and min(len(expected[0][0]), len(expected[2][0])) > 5
    batch_index = got[3]
    assert torch.equal(batch_index, batch_index.sort().values)  # grouped by image in batch order
    for image, (e_boxes, e_scores, e_labels) in enumerate(expected):
        mine = batch_index == image
        assert torch.equal(got[0][mine], e_boxes) and torch.equal(got[1][mine], e_scores)
        assert torch.equal(got[2][mine], e_labels)

import pytest
import torch
from torchvision import ops

from detlab import boxes as B


def random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 50 + 1], dim=1)


@pytest.mark.parametrize("ours, theirs", [
    (B.box_iou, ops.box_iou),
    (B.generalized_box_iou, ops.generalized_box_iou),
    (B.complete_box_iou, ops.complete_box_iou),
])  # fmt: skip
def test_pairwise_overlaps_equal_torchvision(ours, theirs):
    a, b = random_boxes(20, 0), random_boxes(15, 1)
    a[0] = b[0]  # identical boxes: IoU 1
    torch.testing.assert_close(ours(a, b), theirs(a, b), atol=1e-5, rtol=1e-5)


def test_aligned_is_the_diagonal_of_pairwise():
    a, b = random_boxes(10, 2), random_boxes(10, 3)
    for kind, pairwise in (("iou", B.box_iou), ("giou", B.generalized_box_iou), ("ciou", B.complete_box_iou)):
        torch.testing.assert_close(B.aligned_iou(a, b, kind), pairwise(a, b).diagonal())


def test_ciou_gradient_is_finite_for_identical_and_disjoint_boxes():
    a = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]], requires_grad=True)
    b = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 70]])
    (1 - B.aligned_iou(a, b, "ciou")).sum().backward()
    assert torch.isfinite(a.grad).all()


def test_format_round_trip_and_area():
    boxes = random_boxes(5, 4)
    torch.testing.assert_close(B.cxcywh_to_xyxy(B.xyxy_to_cxcywh(boxes)), boxes)
    torch.testing.assert_close(B.xyxy_to_cxcywh(boxes), ops.box_convert(boxes, "xyxy", "cxcywh"))
    torch.testing.assert_close(B.box_area(boxes), ops.box_area(boxes))


def test_wh_iou():
    iou = B.wh_iou(torch.tensor([[10.0, 10], [20, 5]]), torch.tensor([[10.0, 10], [5, 20]]))
    torch.testing.assert_close(iou, torch.tensor([[1.0, 50 / 150], [50 / 150, 25 / 175]]))


def test_unknown_kind_lists_choices():
    with pytest.raises(ValueError, match="iou, giou, ciou"):
        B.aligned_iou(random_boxes(1, 0), random_boxes(1, 1), "diou")


def test_intersection_over_own_area_and_mostly_inside():
    box = torch.tensor([[0.0, 0, 10, 10]])
    regions = torch.tensor([[5.0, 0, 20, 10], [-5, -5, 100, 100], [20, 20, 30, 30], [0, 0, 2.5, 10]])
    # half of the box, all of it (the region is larger: IoU would be 100 / 11025), none, a quarter
    assert B.box_ioa(box, regions).tolist() == [[0.5, 1.0, 0.0, 0.25]]
    assert B.box_ioa(torch.tensor([[4.0, 4, 4, 9]]), regions).tolist() == [[0.0] * 4]  # an empty box: 0, not NaN
    assert B.mostly_inside(box, regions[:1]).tolist() == [True]  # exactly half: inside (>= 0.5)
    # two regions covering a quarter each do not add up
    assert B.mostly_inside(box, torch.tensor([[0.0, 0, 2.5, 10], [7.5, 0, 10, 10]])).tolist() == [False]
    assert B.mostly_inside(box, torch.zeros(0, 4)).tolist() == [False]
    # per image: boxes [B, N, 4] against each image's own regions [B, K, 4], all-zero rows padding
    boxes = torch.tensor([[[0.0, 0, 10, 10], [50, 50, 60, 60]], [[0, 0, 10, 10], [50, 50, 60, 60]]])
    per_image = torch.tensor([[[0.0, 0, 20, 20], [0, 0, 0, 0]], [[45.0, 45, 70, 70], [0, 0, 0, 0]]])
    assert B.mostly_inside(boxes, per_image).tolist() == [[True, False], [False, True]]

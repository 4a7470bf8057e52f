"""Ignore regions (targets' ``ignore_boxes``) in training: no objectness loss for YOLO predictions mostly inside one;
no RPN anchor or RoI proposal mostly inside one sampled as a negative; nothing changes without regions.

"Mostly inside" is computed here from its definition (intersection over the box's own area >= 0.5), not with
detlab's helper, so that the tests check the rule rather than repeat the code."""

import pytest
import torch

from detlab.config import load_config
from detlab.heads.anchors import AnchorGenerator
from detlab.heads.rpn import RegionProposalNetwork, RPNHead
from detlab.heads.yolo import YOLOHead, YOLOLoss
from detlab.models import build_model

ANCHORS = torch.tensor([[10.0, 10], [20, 10], [10, 20], [30, 30], [60, 30], [30, 60], [90, 90], [180, 90], [90, 180]])
STRIDES, GRIDS = [8, 16, 32], [(16, 16), (8, 8), (4, 4)]  # a 128 x 128 input


def fraction_inside(boxes: torch.Tensor, region) -> torch.Tensor:
    """boxes (Tensor[..., 4]) -> Tensor[...]: the share of each box's area inside ``region`` (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = region
    w = (boxes[..., 2].clamp(max=x2) - boxes[..., 0].clamp(min=x1)).clamp(min=0)
    h = (boxes[..., 3].clamp(max=y2) - boxes[..., 1].clamp(min=y1)).clamp(min=0)
    return w * h / ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))


# ---- YOLO


def _zero_outputs(num_classes=2):
    """Raw head outputs that are all 0: each prediction decodes to its anchor centred on its cell."""
    return [torch.zeros(1, 3, h, w, 5 + num_classes, requires_grad=True) for h, w in GRIDS]


def _cell_boxes(level: int) -> torch.Tensor:
    """Tensor[3, H, W, 4]: what the zero outputs of ``level`` decode to, from the paper's formula."""
    h, w = GRIDS[level]
    stride, anchors = STRIDES[level], ANCHORS[3 * level : 3 * level + 3]
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    centre = torch.stack([xs, ys], -1) * stride  # sigmoid(0) = 0.5 of the cell
    half = anchors.view(3, 1, 1, 2) / 2
    return torch.cat([centre - half, centre + half], dim=-1)


def test_yolo_predictions_inside_an_ignore_region_get_no_objectness_gradient():
    """Region [0, 0, 60, 64]. A gt [16, 16, 36, 36] (20 x 20: anchor 1 of level 0, cell (3, 3), its prediction
    [18, 23, 38, 33] wholly inside the region) stays a positive. Every other prediction with half or more of its
    box inside gets objectness gradient exactly 0 -- the 10 x 10 one in cell x 7, y 3 of level 0 ([55, 23, 65, 33])
    is exactly half inside, so it is one of them -- and every prediction less inside gets one."""
    region = (0.0, 0.0, 60.0, 64.0)
    gt = torch.tensor([[16.0, 16, 36, 36]])
    head = YOLOHead([8, 8, 8], 2, STRIDES, ANCHORS, image_size=128)
    loss = YOLOLoss("ciou", ignore_threshold=0.5, multi_anchor_threshold=None)
    outputs = _zero_outputs()
    target = {"boxes": gt, "labels": torch.tensor([1]), "ignore_boxes": torch.tensor([region])}
    losses = loss(outputs, [target], head)
    (losses["loss_obj"] + losses["loss_cls"] + losses["loss_box"]).backward()
    assert fraction_inside(_cell_boxes(0)[0, 3, 7], region) == 0.5
    ignored_total = 0
    for level, output in enumerate(outputs):
        boxes = _cell_boxes(level)
        ignored = (fraction_inside(boxes, region) >= 0.5) | (_iou(boxes, gt[0]) > 0.5)  # region or the gt's ignore
        positive = torch.zeros_like(ignored)
        if level == 0:
            positive[1, 3, 3] = True
        ignored &= ~positive
        grad = output.grad[0]
        assert (grad[..., 4][ignored] == 0).all() and (grad[..., 4][~ignored] != 0).all()
        assert (grad[..., :4][~positive] == 0).all() and (grad[..., 5:][~positive] == 0).all()  # only positives
        ignored_total += int((fraction_inside(boxes, region) >= 0.5).sum())
    assert ignored_total > 50 and outputs[0].grad[0, 1, 3, 3, 4] < 0  # the positive is pushed up
    # and the objectness loss is that of the counted predictions only: smaller than without the region
    without = loss(_zero_outputs(), [{"boxes": gt, "labels": torch.tensor([1])}], head)
    assert losses["loss_obj"] < without["loss_obj"]
    assert torch.equal(losses["loss_cls"], without["loss_cls"]) and torch.equal(losses["loss_box"], without["loss_box"])


def _iou(boxes: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    inside = fraction_inside(boxes, box.tolist()) * (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    union = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]) + (box[2] - box[0]) * (box[3] - box[1])
    return inside / (union - inside)


def test_yolo_empty_or_absent_regions_change_no_loss_and_letterboxing_moves_them():
    head = YOLOHead([8, 8, 8], 2, STRIDES, ANCHORS, image_size=128)
    loss = YOLOLoss("ciou", multi_anchor_threshold=0.25)
    torch.manual_seed(0)
    outputs = [torch.randn(2, 3, h, w, 7) for h, w in GRIDS]
    targets = [{"boxes": torch.tensor([[16.0, 16, 36, 36]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    plain = loss(outputs, targets, head)
    empty = loss(outputs, [dict(t, ignore_boxes=torch.zeros(0, 4)) for t in targets], head)
    assert all(torch.equal(plain[k], empty[k]) for k in plain)
    # the model letterboxes a 32 x 64 image into 64 x 64: 16 rows of padding on top
    cfg = load_config(None, ["model.backbone=resnet18", "model.yolov3.image_size=64",
                             "model.yolov3.neck_channels=[16,32,64]"])
    model = build_model(cfg.model, 3)
    target = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0]),
              "ignore_boxes": torch.tensor([[0.0, 0, 32, 32], [40, 8, 64, 16]])}
    _, (moved,) = model.preprocess([torch.rand(3, 32, 64)], [target])
    assert moved["ignore_boxes"].tolist() == [[0, 16, 32, 48], [40, 24, 64, 32]]


# ---- Faster R-CNN


def _rpn():
    return RegionProposalNetwork(AnchorGenerator([[16], [32], [64]], [[0.5, 1.0, 2.0]] * 3), RPNHead(8, 3),
                                 batch_size_per_image=4096)


def test_rpn_anchors_inside_an_ignore_region_are_never_negatives():
    """Region: the right half of a 128 x 128 image. Negatives mostly inside it become ignored; positives (of the gt
    inside it) stay positives; nothing else changes. The sampler (4096 per image: it would take every negative)
    then draws none of them."""
    rpn = _rpn()
    anchors = rpn.anchor_generator((128, 128), [(32, 32), (16, 16), (8, 8)])
    region = (64.0, 0.0, 128.0, 128.0)
    boxes = torch.tensor([[8.0, 8, 40, 40], [80, 20, 112, 52]])  # the second one inside the region
    plain, _ = rpn.assign(anchors, [{"boxes": boxes}])
    labels, _ = rpn.assign(anchors, [{"boxes": boxes, "ignore_boxes": torch.tensor([region])}])
    inside = fraction_inside(anchors, region) >= 0.5
    expected = torch.where((plain[0] == 0) & inside, -1.0, plain[0])
    assert torch.equal(labels[0], expected)
    assert ((plain[0] == 0) & inside).sum() > 100 and ((plain[0] == 1) & inside).sum() > 0
    torch.manual_seed(0)
    _, negative = rpn.sampler(labels)
    assert not (negative[0] & inside).any() and negative[0].sum() > 100
    torch.manual_seed(0)
    _, plain_negative = rpn.sampler(plain)
    assert (plain_negative[0] & inside).sum() > 100  # without the region they would have been drawn


def test_rpn_image_without_objects_ignores_anchors_in_its_region_too():
    rpn = _rpn()
    anchors = rpn.anchor_generator((128, 128), [(32, 32), (16, 16), (8, 8)])
    region = (0.0, 0.0, 50.0, 128.0)
    labels, _ = rpn.assign(anchors, [{"boxes": torch.zeros(0, 4), "ignore_boxes": torch.tensor([region])}])
    inside = fraction_inside(anchors, region) >= 0.5
    assert torch.equal(labels[0], torch.where(inside, -1.0, 0.0)) and inside.sum() > 100


def small_faster_rcnn():
    cfg = load_config(None, ["model.name=faster_rcnn", "model.backbone=resnet18", "model.faster_rcnn.min_size=96",
                             "model.faster_rcnn.max_size=128", "model.faster_rcnn.fpn_channels=32",
                             "model.faster_rcnn.representation_size=64",
                             "model.faster_rcnn.anchor_sizes=[[16],[32],[64],[128],[256]]"])
    torch.manual_seed(0)
    return build_model(cfg.model, 3)


@pytest.fixture(scope="module")
def faster_rcnn():
    return small_faster_rcnn()


def test_roi_proposals_inside_an_ignore_region_are_never_background(faster_rcnn):
    """300 random proposals on a 96 x 128 input, one gt outside and one inside the region (the left half). Every
    proposal that is not ignored gets sampled (512 per image); no background one is mostly inside the region,
    the gt inside it still has its foreground proposals."""
    roi = faster_rcnn.roi_heads
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * torch.tensor([128.0, 96])
    proposals = torch.cat([xy, xy + torch.rand(300, 2, generator=g) * 40 + 4], dim=1)
    region = (0.0, 0.0, 64.0, 96.0)
    target = {"boxes": torch.tensor([[80.0, 20, 120, 60], [10, 30, 50, 70]]), "labels": torch.tensor([1, 2])}
    sampled = {}
    for name, t in (("plain", target), ("region", dict(target, ignore_boxes=torch.tensor([region])))):
        torch.manual_seed(0)
        (boxes,), (labels,), _ = roi.sample([proposals], [t])
        sampled[name] = (boxes, labels)
    boxes, labels = sampled["region"]
    inside = fraction_inside(boxes, region) >= 0.5
    assert not (inside & (labels == 0)).any() and (inside & (labels == 2)).sum() > 0
    plain_boxes, plain_labels = sampled["plain"]
    dropped = (plain_labels == 0) & (fraction_inside(plain_boxes, region) >= 0.5)
    assert dropped.sum() > 20  # without the region those would be background samples
    assert len(boxes) == len(plain_boxes) - dropped.sum()  # and they are all that changed


def _losses(model, images, targets, seed=0):
    torch.manual_seed(seed)
    model.train()
    return model(images, targets)


def test_faster_rcnn_losses_are_bit_identical_without_regions_and_change_with_one(faster_rcnn):
    images = [torch.rand(3, 90, 120), torch.rand(3, 128, 80)]
    targets = [{"boxes": torch.tensor([[10.0, 20, 60, 70]]), "labels": torch.tensor([2])},
               {"boxes": torch.tensor([[5.0, 5, 40, 100]]), "labels": torch.tensor([0])}]
    plain = _losses(faster_rcnn, images, targets)
    for regions in (torch.zeros(0, 4), torch.tensor([[1000.0, 1000, 1100, 1100]])):  # none, and one covering nothing
        same = _losses(faster_rcnn, images, [dict(t, ignore_boxes=regions) for t in targets])
        assert all(torch.equal(plain[k], same[k]) for k in plain)
    half = [dict(t, ignore_boxes=torch.tensor([[60.0, 0, 120, 128]])) for t in targets]
    changed = _losses(faster_rcnn, images, half)
    assert not torch.equal(plain["loss_objectness"], changed["loss_objectness"])
    assert not torch.equal(plain["loss_classifier"], changed["loss_classifier"])


def test_faster_rcnn_moves_regions_with_the_resize_and_survives_an_image_wholly_ignored(faster_rcnn):
    # 90 x 120 -> 96 x 128: x * 128 / 120, y * 96 / 90
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "ignore_boxes": torch.tensor([[0.0, 0, 60, 45], [-50, -50, 500, 500]])}
    _, _, _, (moved,) = faster_rcnn.preprocess([torch.rand(3, 90, 120)], [target])
    expected = torch.tensor([[0.0, 0, 64, 48], [-160 / 3, -160 / 3, 1600 / 3, 1600 / 3]])
    torch.testing.assert_close(moved["ignore_boxes"], expected)
    # no object and the whole image ignored: nothing to sample, the losses are 0 and still backpropagate
    losses = _losses(faster_rcnn, [torch.rand(3, 90, 120)], [target])
    assert all(v == 0 for v in losses.values())
    sum(losses.values()).backward()

import pytest
import torch

from detlab.config import load_config
from detlab.data.transforms import Letterbox, to_original_boxes
from detlab.heads.yolo import YOLOLoss, assign_targets, decode_boxes, ignore_mask
from detlab.models import build_model


def model_for(backbone: str, image_size: int, num_classes: int = 3, *extra: str):
    cfg = load_config(None, [f"model.backbone={backbone}", f"model.yolov3.image_size={image_size}",
                             "model.yolov3.neck_channels=[16,32,64]", *extra])
    torch.manual_seed(0)
    return build_model(cfg.model, num_classes)


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_large"])
def test_head_output_shapes_at_an_odd_size(backbone):
    cfg = load_config(None, [f"model.backbone={backbone}", "model.yolov3.neck_channels=[16,32,64]"])
    cfg.model.yolov3.image_size = 97  # a config refuses it (not a multiple of 32); the model still computes at it
    torch.manual_seed(0)
    model = build_model(cfg.model, 3)
    batch, _ = model.preprocess([torch.rand(3, 97, 60), torch.rand(3, 50, 97)])
    outputs = model.head(model.neck(model.backbone(batch)))
    # ceil(97 / s) cells per side at strides 8, 16, 32; 3 anchors; 5 + 3 numbers
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 13, 13, 8), (2, 3, 7, 7, 8), (2, 3, 4, 4, 8)]
    model.eval()
    detections = model([torch.rand(3, 97, 60)])
    assert detections[0]["boxes"].shape[1] == 4 and detections[0]["labels"].dtype == torch.int64


ANCHORS = torch.tensor([[10.0, 10], [20, 10], [10, 20], [30, 30], [60, 30], [30, 60], [90, 90], [180, 90], [90, 180]])
STRIDES, GRIDS = [8, 16, 32], [(16, 16), (8, 8), (4, 4)]  # a 128 x 128 input


def test_assignment_picks_the_best_anchor_and_the_centre_cell():
    targets = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [40, 20, 100, 50]]), "labels": torch.tensor([2, 0])},
               {"boxes": torch.tensor([[10.0, 10, 40, 40]]), "labels": torch.tensor([1])}]
    levels = assign_targets(targets, ANCHORS, STRIDES, GRIDS)
    # gt 0: 10x10 -> anchor 0 (level 0), centre (5, 5) -> cell (0, 0)
    assert levels[0].batch.tolist() == [0] and levels[0].anchor.tolist() == [0]
    assert (levels[0].gy.tolist(), levels[0].gx.tolist(), levels[0].labels.tolist()) == ([0], [0], [2])
    # gt 1: 60x30 -> anchor 4 (level 1, index 1), centre (70, 35) / 16 -> cell (2, 4)
    # gt of image 1: 30x30 -> anchor 3 (level 1, index 0), centre (25, 25) / 16 -> cell (1, 1)
    assert levels[1].batch.tolist() == [0, 1] and levels[1].anchor.tolist() == [1, 0]
    assert levels[1].gy.tolist() == [2, 1] and levels[1].gx.tolist() == [4, 1]
    assert len(levels[2].batch) == 0


def test_assignment_with_multi_anchor_threshold_adds_similar_anchors():
    targets = [{"boxes": torch.tensor([[0.0, 0, 20, 15]]), "labels": torch.tensor([0])}]
    one = assign_targets(targets, ANCHORS, STRIDES, GRIDS)
    many = assign_targets(targets, ANCHORS, STRIDES, GRIDS, multi_anchor_threshold=0.4)
    assert sum(len(level.batch) for level in one) == 1 and one[0].anchor.tolist() == [1]
    # shape IoU with (10, 10): 100/300; (20, 10): 200/300; (10, 20): 150/350; (30, 30): 300/900
    assert many[0].anchor.tolist() == [1, 2] and len(many[1].batch) == len(many[2].batch) == 0


def test_neighbour_cells_add_the_two_adjacent_cells_nearest_the_centre():
    # 20x20: shape IoU .25 with (10, 10), .5 with (20, 10) and (10, 20), .44 with (30, 30) -> anchor 1 (the first
    # best), level 0, stride 8. Centre (13, 21) -> cell x 1, y 2, both offsets .625: right and lower neighbours
    targets = [{"boxes": torch.tensor([[3.0, 11, 23, 31]]), "labels": torch.tensor([1])}]
    plain = assign_targets(targets, ANCHORS, STRIDES, GRIDS)[0]
    level = assign_targets(targets, ANCHORS, STRIDES, GRIDS, neighbour_cells=True)[0]
    assert list(zip(plain.gy.tolist(), plain.gx.tolist())) == [(2, 1)]
    assert sorted(zip(level.gy.tolist(), level.gx.tolist())) == [(2, 1), (2, 2), (3, 1)]
    assert level.anchor.tolist() == [1, 1, 1] and level.labels.tolist() == [1, 1, 1]
    # centre (3, 3) in the top-left cell's upper-left quarter: both neighbours would be outside the grid
    corner = [{"boxes": torch.tensor([[-7.0, -2, 13, 8]]), "labels": torch.tensor([0])}]
    level = assign_targets(corner, ANCHORS, STRIDES, GRIDS, neighbour_cells=True)[0]
    assert list(zip(level.gy.tolist(), level.gx.tolist())) == [(0, 0)]


def test_neighbour_cells_decoding_reaches_half_a_cell_beyond_the_cell():
    output = torch.zeros(1, 3, 2, 2, 6)
    output[..., 0], output[..., 1] = 20.0, -20.0  # sigmoid ~1 in x, ~0 in y
    centre = decode_boxes(output, ANCHORS[:3], stride=8, neighbour_cells=True)[0, 0, 1, 1]
    torch.testing.assert_close((centre[:2] + centre[2:]) / 2, torch.tensor([(1.5 + 1) * 8, (-0.5 + 1) * 8]))
    output.zero_()  # a zero output still decodes to the cell centre
    plain, shifted = decode_boxes(output, ANCHORS[:3], 8), decode_boxes(output, ANCHORS[:3], 8, neighbour_cells=True)
    torch.testing.assert_close(plain, shifted)


def test_paper_box_loss_with_neighbour_cells_is_lowest_at_the_true_centre():
    """The xy target of a positive in a neighbouring cell is the logit that decodes to the ground-truth centre."""
    loss = YOLOLoss("paper")
    box = torch.tensor([[3.0, 11, 23, 31]])  # centre (13, 21); cells (2, 1), (2, 2), (3, 1) at stride 8
    pos = assign_targets([{"boxes": box, "labels": torch.tensor([0])}], ANCHORS, STRIDES, GRIDS,
                         neighbour_cells=True)[0]
    xy = torch.zeros(len(pos.batch), 2, requires_grad=True)
    wh = pos.boxes[:, 2:] - pos.boxes[:, :2]
    optimizer = torch.optim.SGD([xy], lr=1.0)
    for _ in range(300):
        optimizer.zero_grad()
        picked = torch.cat([xy, torch.zeros(len(pos.batch), 3)], dim=1)
        loss._box_loss(picked, None, pos, ANCHORS[pos.anchor], wh, 8, neighbour_cells=True).sum().backward()
        optimizer.step()
    output = torch.zeros(1, 3, 16, 16, 6)
    output[pos.batch, pos.anchor, pos.gy, pos.gx, :2] = xy.detach()
    decoded = decode_boxes(output, ANCHORS[:3], 8, neighbour_cells=True)[pos.batch, pos.anchor, pos.gy, pos.gx]
    torch.testing.assert_close((decoded[:, :2] + decoded[:, 2:]) / 2, torch.tensor([[13.0, 21.0]] * 3), atol=0.05,
                               rtol=0)


def test_ignore_mask_marks_predictions_overlapping_a_ground_truth():
    boxes = torch.zeros(1, 1, 1, 3, 4)
    boxes[0, 0, 0] = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]])  # IoU 1, 0.68, 0
    targets = [{"boxes": torch.tensor([[0.0, 0, 10, 10]])}]
    assert ignore_mask(boxes, targets, 0.5).flatten().tolist() == [True, True, False]
    assert ignore_mask(boxes, targets, 0.7).flatten().tolist() == [True, False, False]
    assert not ignore_mask(boxes, [{"boxes": torch.zeros(0, 4)}], 0.5).any()


def test_decode_puts_a_zero_output_at_the_cell_centre_with_the_anchor_size():
    output = torch.zeros(1, 3, 2, 2, 6)
    boxes = decode_boxes(output, ANCHORS[:3], stride=8)
    torch.testing.assert_close(boxes[0, 1, 1, 0], torch.tensor([4.0 - 10, 12 - 5, 4 + 10, 12 + 5]))


@pytest.mark.parametrize("box_loss", ["paper", "giou", "ciou"])
def test_loss_is_finite_and_decreases_on_a_tiny_overfit(box_loss):
    model = model_for("resnet18", 64, 2, f"model.yolov3.box_loss={box_loss}")
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[8.0, 8, 40, 30]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[20.0, 10, 60, 60], [0, 0, 16, 16]]), "labels": torch.tensor([0, 1])}]
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    model.train()
    totals = []
    for _ in range(8):
        losses = model(images, targets)
        loss = sum(losses.values())
        assert all(torch.isfinite(v) for v in losses.values()) and set(losses) == {"loss_box", "loss_obj", "loss_cls"}
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    assert totals[-1] < 0.7 * totals[0]


def test_loss_without_any_ground_truth_is_finite():
    model = model_for("resnet18", 64, 2)
    losses = model([torch.rand(3, 64, 64)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    assert losses["loss_box"] == 0 and torch.isfinite(losses["loss_obj"])


def test_letterbox_round_trip_maps_boxes_to_original_pixels():
    image = torch.zeros(3, 100, 200, dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 20, 110, 80], [150, 0, 200, 100]])
    letterboxed, target = Letterbox(64)(image, {"boxes": boxes, "orig_size": torch.tensor([100, 200])})
    assert letterboxed.shape == (3, 64, 64)
    torch.testing.assert_close(to_original_boxes(target["boxes"], target), boxes)


def test_eval_boxes_come_back_in_original_pixels():
    """A prediction equal to a ground truth in letterboxed pixels comes out as that ground truth in original ones."""
    model = model_for("resnet18", 64, 2).eval()
    image = torch.rand(3, 50, 100)
    _, targets = model.preprocess([image], [{"boxes": torch.tensor([[20.0, 10, 60, 40]])}])
    letterboxed_box = targets[0]["boxes"]  # scale 0.64, offset (0, 16)
    torch.testing.assert_close(letterboxed_box, torch.tensor([[12.8, 22.4, 38.4, 41.6]]))
    torch.testing.assert_close(to_original_boxes(letterboxed_box, targets[0]), torch.tensor([[20.0, 10, 60, 40]]))
    detections = model([image])
    assert (detections[0]["boxes"][:, 2] <= 100).all() and (detections[0]["boxes"][:, 3] <= 50).all()


def test_train_mode_needs_targets_and_bad_inputs_are_named():
    model = model_for("resnet18", 64, 2)
    with pytest.raises(ValueError, match="needs targets"):
        model([torch.rand(3, 64, 64)])
    with pytest.raises(ValueError, match=r"Tensor\[3, H, W\]"):
        model.eval()([torch.rand(1, 64, 64)])
    with pytest.raises(ValueError, match="valid choices: paper, giou, ciou"):
        YOLOLoss("l1")


def test_fitted_anchors_recall_at_least_as_well_as_the_defaults():
    from detlab.models.anchor_fitting import best_possible_recall, fit_anchors
    from detlab.models.yolov3 import default_anchors

    g = torch.Generator().manual_seed(0)
    wh = torch.cat([torch.rand(200, 2, generator=g) * 10 + 40, torch.rand(200, 2, generator=g) * 5 + 10])
    fitted = fit_anchors(wh, 9)
    assert fitted.shape == (9, 2) and (fitted.prod(1).diff() >= 0).all()
    assert best_possible_recall(wh, fitted) >= best_possible_recall(wh, torch.tensor(default_anchors(128)))
    assert best_possible_recall(wh, fitted) > 0.95


def test_decoding_settings_live_on_the_head_and_come_from_the_config():
    """The head decodes as its model was trained (neighbour cells or not); the loss only reads them from it."""
    plain = model_for("resnet18", 64, 2, "model.yolov3.neighbour_cells=false").eval()
    shifted = model_for("resnet18", 64, 2).eval()
    shifted.load_state_dict(plain.state_dict())
    assert not plain.head.neighbour_cells and shifted.head.neighbour_cells
    assert not hasattr(shifted.loss, "neighbour_cells")
    output = torch.zeros(1, 3, 2, 2, 7)
    output[..., 0] = 3.0  # sigmoid ~0.95: the two decodings disagree
    a, b = plain.head.decode(output, 0), shifted.head.decode(output, 0)
    torch.testing.assert_close(a, decode_boxes(output, plain.head.level_anchors(0), 8))
    torch.testing.assert_close(b, decode_boxes(output, plain.head.level_anchors(0), 8, neighbour_cells=True))
    assert not torch.allclose(a, b)


def test_pre_nms_top_k_is_configurable():
    image = torch.rand(3, 64, 64)
    settings = ["model.score_threshold=0.0", "model.nms_threshold=1.0"]  # keep everything NMS would let through
    many = model_for("resnet18", 64, 2, *settings).eval()
    few = model_for("resnet18", 64, 2, *settings, "model.yolov3.pre_nms_top_k=7").eval()
    few.load_state_dict(many.state_dict())
    with torch.no_grad():
        all_dets, top = many([image])[0], few([image])[0]
    assert len(all_dets["scores"]) == 100 and len(top["scores"]) == 7  # max_detections caps the first
    torch.testing.assert_close(top["scores"], all_dets["scores"][:7])

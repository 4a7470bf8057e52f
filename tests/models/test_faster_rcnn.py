"""Faster R-CNN's own behaviour (the torchvision comparison is in test_faster_rcnn_torchvision.py): its variants,
the input transform, labels 0..C-1 at the boundary, images without boxes, zero-area boxes, and its config."""

import copy
import re
from pathlib import Path

import pytest
import torch

from detlab.config import ConfigError, load_config
from detlab.heads.anchors import AnchorGenerator
from detlab.heads.matching import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, BalancedSampler, Matcher
from detlab.models import architecture, build_model, input_pipeline
from detlab.data.loader import batch_images
from detlab.transfer import FrozenBatchNorm2d, apply_strategy

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = ["model.name=faster_rcnn", "model.faster_rcnn.min_size=96", "model.faster_rcnn.max_size=128",
         "model.faster_rcnn.fpn_channels=32", "model.faster_rcnn.representation_size=64",
         "model.faster_rcnn.anchor_sizes=[[16],[32],[64],[128],[256]]", "model.score_threshold=0.0"]
TARGETS = [{"boxes": torch.tensor([[10.0, 20, 60, 70]]), "labels": torch.tensor([2])},
           {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]


def small(*extra, num_classes=3):
    torch.manual_seed(0)
    return build_model(load_config(None, SMALL + list(extra)).model, num_classes)


@pytest.mark.parametrize("extra", [["model.backbone=resnet18"], ["model.backbone=mobilenet_v3_large", "model.faster_rcnn.anchor_sizes=null"],
                                   ["model.backbone=resnet18", "model.faster_rcnn.neck=c4",
                                    "model.faster_rcnn.anchor_sizes=null"]], ids=["r18-fpn", "mnv3-fpn", "r18-c4"])
def test_every_variant_trains_and_predicts_labels_0_to_c_minus_1(extra):
    model = small(*extra)
    images = [torch.rand(3, 90, 120), torch.randint(0, 256, (3, 128, 80), dtype=torch.uint8)]
    losses = model(images, TARGETS)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        detections = model(images)
    for detection, (height, width) in zip(detections, [(90, 120), (128, 80)]):
        assert len(detection["labels"]) > 0
        assert detection["labels"].min() >= 0 and detection["labels"].max() <= 2
        boxes = detection["boxes"]  # clipped to the image given, in its pixels
        assert boxes[:, 0::2].max() <= width + 1e-4 and boxes[:, 1::2].max() <= height + 1e-4


@pytest.mark.parametrize("neck", ["fpn", "c4"])
def test_an_image_without_a_single_proposal_predicts_nothing(neck):
    """Every proposal below model.faster_rcnn.rpn_score_threshold (torchvision's MobileNet models use 0.05): the RoI
    heads get none and the image has no detections (the box decoding once failed on zero rows)."""
    extra = ["model.faster_rcnn.anchor_sizes=null"] if neck == "c4" else []
    model = small("model.backbone=resnet18", f"model.faster_rcnn.neck={neck}", *extra,
                  "model.faster_rcnn.rpn_score_threshold=1.0").eval()
    with torch.no_grad():
        (detection,) = model([torch.rand(3, 90, 120)])
    assert detection["boxes"].shape == (0, 4) and detection["scores"].shape == detection["labels"].shape == (0,)


def test_c4_uses_res5_of_the_backbone_as_its_box_head_without_a_second_copy():
    model = small("model.faster_rcnn.neck=c4", "model.faster_rcnn.anchor_sizes=null")
    keys = list(model.state_dict())
    assert not any(key.startswith("roi_heads.box_head") for key in keys)
    assert any(key.startswith("backbone.stages.c5.") for key in keys)
    assert model.roi_heads.pooler.output_size == 14 and model.roi_heads.box_head.out_features == 512
    assert model.rpn.anchor_generator.num_anchors_per_location() == [15]
    clone = copy.deepcopy(model)  # the EMA copy: its box head runs its own backbone's res5, not the original's
    assert clone.roi_heads.box_head._backbone[0] is clone.backbone
    # a frozen backbone freezes the box head too: it is the backbone's c5
    apply_strategy(model, "feature_extract")
    assert not any(p.requires_grad for p in model.backbone.stages.c5.parameters())
    with pytest.raises(ConfigError, match="override 'model.faster_rcnn.neck=c4': model.faster_rcnn.neck = 'c4' needs "
                                          "a ResNet backbone .*not model.backbone 'mobilenet_v3_large'; use neck fpn"):
        small("model.faster_rcnn.neck=c4", "model.backbone=mobilenet_v3_large", "model.faster_rcnn.anchor_sizes=null")


def test_an_image_without_boxes_trains_on_negatives_only():
    model = small()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model([torch.rand(3, 96, 96)], empty)
    assert losses["loss_box_reg"] == 0 and losses["loss_rpn_box_reg"] == 0
    assert losses["loss_classifier"] > 0 and losses["loss_objectness"] > 0
    sum(losses.values()).backward()
    assert model.rpn.head.cls_logits.weight.grad.abs().sum() > 0


def test_a_zero_area_box_is_dropped_with_a_counted_warning():
    model = small()
    target = {"boxes": torch.tensor([[10.0, 10, 10, 40], [5, 5, 50, 50], [20, 30, 60, 30]]),
              "labels": torch.tensor([0, 1, 2]), "image_id": 17}
    with pytest.warns(UserWarning, match=r"dropped 2 zero-area box\(es\) of image 17 \(batch index 0\)"):
        moved = model.move_target(target, 0, (96, 96), (96, 96))
    assert moved["boxes"].tolist() == [[5.0, 5, 50, 50]] and moved["labels"].tolist() == [2]  # 1..C inside


def test_labels_outside_0_to_c_minus_1_are_an_error_naming_the_target():
    with pytest.raises(ValueError, match=r"targets\[0\]: labels must be in 0..2, got 3..3"):
        small()([torch.rand(3, 96, 96)], [{"boxes": torch.tensor([[1.0, 1, 20, 20]]), "labels": torch.tensor([3])}])


def test_the_input_transform_resizes_by_the_short_side_and_pads_to_32():
    model = small().eval()
    batch, sizes, originals, _ = model.preprocess([torch.rand(3, 60, 100), torch.rand(3, 200, 100)])
    # 60x100: short side 60 -> 96 (x1.6) gives 96x160, over max 128: x1.28 -> 76x128; 200x100: x0.64 -> 128x64
    assert sizes == [(76, 128), (128, 64)] and originals == [(60, 100), (200, 100)]
    assert tuple(batch.shape) == (2, 3, 128, 128)
    assert batch[1, :, :, 64:].abs().sum() == 0  # zero padding after normalisation
    # an image that already fits the rule (the training pipeline resized it) is kept as it is
    image = torch.rand(3, 96, 120)
    assert model.resize(image) is image
    assert batch_images([torch.ones(3, 33, 65)])[0].shape == (1, 3, 64, 96)


def test_the_input_pipeline_resizes_training_images_as_the_model_does():
    cfg = load_config(None, SMALL)
    inputs = input_pipeline(cfg.model)
    assert inputs.group_by_aspect and inputs.crop_size == (96, 96) and inputs.scale(60, 100) == 1.28
    image, target = inputs.resize()(torch.zeros(3, 60, 100, dtype=torch.uint8),
                                    {"boxes": torch.tensor([[10.0, 10, 50, 50]]), "labels": torch.tensor([0])})
    assert tuple(image.shape[-2:]) == (77, 128)
    model = small()
    assert model.resize(image.float()) is not None and tuple(model.resize(image.float()).shape[-2:]) == (77, 128)


def test_anchors_follow_the_grid_ratio_major_and_rounded():
    generator = AnchorGenerator([[32], [64]], [[0.5, 1.0, 2.0]] * 2)
    anchors = generator((64, 64), [(8, 8), (4, 4)])
    assert anchors.shape == (8 * 8 * 3 + 4 * 4 * 3, 4)
    # first cell: ratio 0.5 (wide), 1, 2 (tall), centred on (0, 0); then the next cell 8 pixels right
    assert anchors[:4].tolist() == [[-23.0, -11.0, 23.0, 11.0], [-16.0, -16.0, 16.0, 16.0],
                                    [-11.0, -23.0, 11.0, 23.0], [-15.0, -11.0, 31.0, 11.0]]
    assert anchors[8 * 8 * 3 + 1].tolist() == [-32.0, -32.0, 32.0, 32.0]


def test_matcher_thresholds_and_low_quality_matches():
    iou = torch.tensor([[0.9, 0.5, 0.2, 0.1],
                        [0.1, 0.6, 0.25, 0.0]])
    assert Matcher(0.7, 0.3)(iou).tolist() == [0, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD, BELOW_LOW_THRESHOLD]
    # ground truth 1 overlaps element 1 most (0.6): it keeps it although 0.6 < 0.7
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou).tolist() == [0, 1, BELOW_LOW_THRESHOLD,
                                                                                BELOW_LOW_THRESHOLD]
    with pytest.raises(ValueError, match="background IoU 0.8 must not exceed the foreground IoU 0.5"):
        Matcher(0.5, 0.8)


def test_sampler_keeps_the_positive_fraction_and_never_draws_ignored():
    labels = torch.tensor([1] * 10 + [0] * 100 + [-1] * 50)
    torch.manual_seed(0)
    positive, negative = BalancedSampler(16, 0.25)([labels])
    assert positive[0].sum() == 4 and negative[0].sum() == 12
    assert (labels[positive[0]] == 1).all() and (labels[negative[0]] == 0).all()
    positive, negative = BalancedSampler(256, 0.5)([labels])  # too few positives: negatives fill up
    assert positive[0].sum() == 10 and negative[0].sum() == 100


def test_the_section_is_checked_and_names_the_architecture_keys():
    cfg = load_config(None, SMALL)
    assert architecture(cfg.model) == {
        "model.name": "faster_rcnn", "model.backbone": "resnet18", "model.faster_rcnn.neck": "fpn",
        "model.faster_rcnn.anchor_sizes": [[16], [32], [64], [128], [256]],
        "model.faster_rcnn.aspect_ratios": [0.5, 1.0, 2.0], "model.faster_rcnn.fpn_channels": 32,
        "model.faster_rcnn.representation_size": 64}
    with pytest.raises(ConfigError, match="model.faster_rcnn.neck = 'c5' is not valid; valid choices: fpn, c4"):
        load_config(None, SMALL + ["model.faster_rcnn.neck=c5"])
    with pytest.raises(ConfigError, match="model.yolov3 is the section of model 'yolov3', but model.name is "
                                          "'faster_rcnn'"):
        load_config(None, SMALL + ["model.yolov3.image_size=64"])
    with pytest.raises(ConfigError, match=re.escape("model.faster_rcnn.anchor_sizes = [[16.0], [32.0]] must list 5 "
                                                    "levels of sizes (the maps the RPN of neck fpn on resnet18 reads), "
                                                    "not 2")):
        load_config(None, SMALL + ["model.faster_rcnn.anchor_sizes=[[16],[32]]"])


def test_pretrained_weights_freeze_the_backbone_batchnorm_as_torchvision_does(tmp_path):
    backbone = build_model(load_config(None, SMALL).model, 3).backbone
    path = tmp_path / "backbone.pt"
    torch.save(backbone.state_dict(), path)
    model = small(f"model.weights={path}")
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in small().backbone.modules())
    unfrozen = small(f"model.weights={path}", "model.faster_rcnn.frozen_batchnorm=false")
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in unfrozen.backbone.modules())


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("faster_rcnn_*.yaml")))
def test_every_shipped_faster_rcnn_config_builds(name):
    cfg = load_config(CONFIGS / f"{name}.yaml", ["model.weights=null"])  # no download: the architecture only
    model = build_model(cfg.model, 3)
    assert model.neck is None if cfg.model.faster_rcnn.neck == "c4" else len(model.neck.inner_blocks) in (2, 4)


def test_mixed_precision_computes_the_heads_in_bfloat16_and_the_box_maths_in_float32():
    model = small("model.faster_rcnn.channels_last=false")
    seen = {}
    def record(module, inputs, output):  # returns None: the output stays as it is
        seen.setdefault("rpn", output.dtype)

    model.rpn.head.cls_logits.register_forward_hook(record)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model([torch.rand(3, 96, 96)], TARGETS[:1])
        model.eval()
        detections = model([torch.rand(3, 96, 96)])
    assert seen["rpn"] == torch.bfloat16
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    assert detections[0]["boxes"].dtype == torch.float32

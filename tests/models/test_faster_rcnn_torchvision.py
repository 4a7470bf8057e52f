"""detlab's Faster R-CNN against torchvision's, which is the oracle: the same weights give the same detections and,
with the same seed, the same sampled anchors and proposals and so the same four losses. Also the weights path:
torchvision detector checkpoints by name (offline, from $TORCH_HOME) or by file, and the predictor rows kept."""

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import torchvision
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from detlab.boxes import box_iou
from detlab.config import load_config
from detlab.models import build_model
from detlab.models.torchvision_detectors import DetectorFile, coco_categories, load_into
from detlab.transfer import FrozenBatchNorm2d

ROOT = Path(__file__).resolve().parents[2]
SIZES = ["model.faster_rcnn.min_size=160", "model.faster_rcnn.max_size=240", "model.score_threshold=0.05",
         "model.nms_threshold=0.5"]
IMAGES = [(150, 200), (180, 120)]  # (height, width): both get resized, and the batch padded
TARGETS = [{"boxes": torch.tensor([[10.0, 20, 80, 90], [50, 40, 190, 140]]), "labels": torch.tensor([0, 2])},
           {"boxes": torch.tensor([[5.0, 5, 60, 100]]), "labels": torch.tensor([1])}]


def torchvision_model(kind: str):
    """torchvision's detector with random weights (3 classes + background) and our settings for it."""
    if kind == "resnet18_fpn_frozen_bn":  # resnet_fpn_backbone's default norm layer is FrozenBatchNorm2d
        backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
        model = TorchvisionFasterRCNN(backbone, num_classes=4, min_size=160, max_size=240)
        return model, ["model.backbone=resnet18", "model.faster_rcnn.frozen_batchnorm=true"]
    if kind == "resnet50_fpn":
        model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4, min_size=160,
                                        max_size=240)
        return model, ["model.backbone=resnet50"]
    model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=4, min_size=160,
                                              max_size=240)
    return model, ["model.backbone=mobilenet_v3_large", "model.faster_rcnn.rpn_score_threshold=0.05"]


def calibrate_batchnorm(model, images) -> None:
    """Give the random BatchNorms the statistics of real activations: with running mean 0 / var 1 a random
    MobileNet's features vanish, every objectness ties at 0.5 and the comparison would test tie-breaking only."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.momentum = None  # cumulative average: one batch sets the statistics
        m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model.backbone(model.transform(images)[0].tensors)
    for m in norms:
        m.momentum = 0.1


def pair(kind: str, channels_last: bool = False):
    """torchvision's model and detlab's with its weights; channels_last off: the exact comparison computes in the
    same memory layout as torchvision, so float rounding cannot move a near-tie."""
    torch.manual_seed(0)
    images = [torch.rand(3, h, w) for h, w in IMAGES]
    theirs, settings = torchvision_model(kind)
    calibrate_batchnorm(theirs, images)
    cfg = load_config(None, ["model.name=faster_rcnn", *SIZES, *settings,
                             f"model.faster_rcnn.channels_last={str(channels_last).lower()}"])
    ours = build_model(cfg.model, 3)
    load_into(ours, DetectorFile(Path("random weights"), theirs.state_dict()), None)
    return theirs, ours, images


KINDS = ["resnet18_fpn_frozen_bn", "resnet50_fpn", "mobilenet_v3_large_fpn"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_weights_give_the_same_detections(kind):
    theirs, ours, images = pair(kind)
    theirs.eval(), ours.eval()
    with torch.no_grad():
        expected, got = theirs(images), ours(images)
    for e, g in zip(expected, got):
        assert len(g["boxes"]) == len(e["boxes"]) > 10  # random weights: many low-score boxes, all compared
        torch.testing.assert_close(g["boxes"], e["boxes"], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(g["scores"], e["scores"], atol=1e-4, rtol=0)
        assert torch.equal(g["labels"], e["labels"] - 1)  # torchvision's 1..C are detlab's 0..C-1


@pytest.mark.parametrize("kind", KINDS)
def test_channels_last_layout_gives_the_same_detections_to_float_rounding(kind):
    theirs, ours, images = pair(kind, channels_last=True)
    convs = [m for m in ours.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(conv.weight.is_contiguous(memory_format=torch.channels_last) for conv in convs)
    theirs.eval(), ours.eval()
    with torch.no_grad():
        expected, got = theirs(images), ours(images)
    for e, g in zip(expected, got):
        assert len(g["boxes"]) == len(e["boxes"]) > 10
        # rounding may reorder near-equal scores of random weights, so detections are matched, not indexed: the
        # same label, IoU > 0.999, score within 1e-4
        iou = box_iou(g["boxes"], e["boxes"])
        same = (iou > 0.999) & (g["labels"][:, None] == e["labels"][None] - 1) & (
            (g["scores"][:, None] - e["scores"][None]).abs() < 1e-4)
        assert same.any(dim=1).float().mean() >= 0.97


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_seed_samples_the_same_anchors_and_proposals_so_the_losses_agree(kind):
    theirs, ours, images = pair(kind)
    theirs.train(), ours.train()
    their_targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in TARGETS]
    torch.manual_seed(1)
    expected = theirs(images, their_targets)
    torch.manual_seed(1)
    # torchvision draws each training image's min_size (torch_choice) before anything else, even from one
    # size; draw as many numbers so both samplers start from the same generator state
    for _ in images:
        torch.empty(1).uniform_(0.0, 1.0)
    got = ours(images, TARGETS)
    assert set(got) == set(expected) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-4, rtol=1e-4, msg=key)
    assert got["loss_box_reg"] > 0 and got["loss_rpn_box_reg"] > 0


def test_a_state_dict_of_another_architecture_is_refused_listing_the_keys():
    theirs, _ = torchvision_model("mobilenet_v3_large_fpn")
    cfg = load_config(None, ["model.name=faster_rcnn", "model.backbone=resnet18", *SIZES])
    ours = build_model(cfg.model, 3)
    with pytest.raises(ValueError) as error:
        load_into(ours, DetectorFile(Path("mobilenet.pth"), theirs.state_dict()), None)
    message = str(error.value)
    assert message.startswith("mobilenet.pth does not fit this Faster R-CNN (resnet18, FPN):")
    # every key of the ResNet is missing, every MobileNet key is unexpected: counted, the first ones named
    assert "missing keys (108): backbone.body.bn1.bias, backbone.body.bn1.running_mean" in message
    assert "unexpected keys (" in message and "backbone.body.0.0.weight" in message and "more)" in message
    assert "rpn.head.bbox_pred.bias: file (60,) vs model (12,)" in message


def _write_torchvision_checkpoint(torch_home: Path, weights_name: str, model) -> Path:
    enum = torchvision.models.get_weight(weights_name)
    path = torch_home / "hub" / "checkpoints" / Path(urlparse(enum.url).path).name
    path.parent.mkdir(parents=True)
    torch.save(model.state_dict(), path)
    return path


def test_named_torchvision_weights_load_offline_and_keep_the_rows_of_shared_coco_classes(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    coco = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)
    _write_torchvision_checkpoint(tmp_path, "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1", coco)
    cfg = load_config(ROOT / "configs" / "faster_rcnn_mobilenet_v3_large_320_fpn_coco.yaml")
    names = ["dog", "person"]  # COCO ids 18 and 1, in the dataset's own order
    ours = build_model(cfg.model, 2, names)
    theirs = coco.state_dict()
    rows = [0, coco_categories().index("dog"), coco_categories().index("person")]
    assert rows == [0, 18, 1]
    assert torch.equal(ours.roi_heads.box_predictor.cls_score.weight, theirs["roi_heads.box_predictor.cls_score.weight"][rows])
    box_rows = [4 * r + i for r in rows for i in range(4)]
    assert torch.equal(ours.roi_heads.box_predictor.bbox_pred.bias, theirs["roi_heads.box_predictor.bbox_pred.bias"][box_rows])
    assert torch.equal(ours.rpn.head.conv.weight, theirs["rpn.head.conv.0.0.weight"])
    assert torch.equal(getattr(ours.backbone.stages.c5, "16")[0].weight, theirs["backbone.body.16.0.weight"])
    # pretrained detector weights come with frozen BatchNorm in the backbone, as in torchvision
    norms = [m for m in ours.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) and m.eps == 1e-5 for m in norms)
    assert (cfg.model.faster_rcnn.min_size, cfg.model.faster_rcnn.rpn_pre_nms_top_n_test) == (320, 150)

    # on COCO's own 80 classes it keeps all of them, in the dataset's label order
    coco_names = [name for name in coco_categories()[1:] if name != "N/A"]
    full = build_model(cfg.model, 80, coco_names)
    their_rows = [0] + [coco_categories().index(name) for name in coco_names]
    assert torch.equal(full.roi_heads.box_predictor.cls_score.bias,
                       theirs["roi_heads.box_predictor.cls_score.bias"][their_rows])


def test_other_classes_get_a_new_predictor_and_keep_everything_else(tmp_path):
    torch.manual_seed(0)
    theirs = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    path = tmp_path / "detector.pth"
    torch.save(theirs.state_dict(), path)
    cfg = load_config(None, ["model.name=faster_rcnn", "model.backbone=resnet50", f"model.weights={path}"])
    ours = build_model(cfg.model, 1, ["cellbody"])
    assert ours.roi_heads.box_predictor.cls_score.weight.shape == (2, 1024)
    assert torch.equal(ours.roi_heads.box_head.fc6.weight, theirs.roi_heads.box_head.fc6.weight)
    assert torch.equal(ours.neck.inner_blocks[0].weight, theirs.backbone.fpn.inner_blocks[0][0].weight)
    assert torch.equal(ours.backbone.stages.c3[0].conv1.weight, theirs.backbone.body.layer2[0].conv1.weight)


def test_the_released_file_layout_of_older_torchvision_loads(tmp_path):
    """The published fasterrcnn_resnet50_fpn file predates Conv2dNormActivation: fpn.inner_blocks.0.weight,
    rpn.head.conv.weight."""
    torch.manual_seed(0)
    theirs = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4)
    old = {re.sub(r"^(backbone\.fpn\.\w+_blocks\.\d+)\.0\.", r"\1.", key).replace("rpn.head.conv.0.0.", "rpn.head.conv."):
           value for key, value in theirs.state_dict().items()}
    assert "backbone.fpn.inner_blocks.0.weight" in old and "rpn.head.conv.weight" in old
    ours = build_model(load_config(None, ["model.name=faster_rcnn", "model.backbone=resnet50"]).model, 3)
    load_into(ours, DetectorFile(tmp_path / "old.pth", old), None)
    assert torch.equal(ours.neck.layer_blocks[3].weight, theirs.backbone.fpn.layer_blocks[3][0].weight)
    assert torch.equal(ours.rpn.head.conv.bias, theirs.rpn.head.conv[0][0].bias)


def test_a_named_detector_names_the_settings_it_needs():
    cfg = load_config(None, ["model.name=faster_rcnn", "model.weights=fasterrcnn_resnet50_fpn"])
    with pytest.raises(ValueError, match="is a resnet50 FPN detector; set model.backbone=resnet50"):
        build_model(cfg.model, 3)
    cfg = load_config(None, ["model.name=faster_rcnn", "model.weights=fasterrcnn_resnet50_fpn_v2"])
    with pytest.raises(ValueError, match="not supported, its FPN and RPN head use BatchNorm"):
        build_model(cfg.model, 3)

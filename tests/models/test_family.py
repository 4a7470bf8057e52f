"""The engine, the config, checkpoints and ``Detector`` are family-neutral: a second family registered in
:data:`detlab.models.MODELS` (here a toy one, its own section and an input pipeline that groups by aspect ratio)
trains, resumes and predicts through them without any of them knowing its name."""

from dataclasses import dataclass, field

import pytest
import torch

import detlab.engine.trainer as trainer_module
from detlab.api import Detector
from detlab.backbones import build_backbone
from detlab.config import ConfigError, load_config
from detlab.data.inputs import SquareLetterbox
from detlab.engine import CheckpointError, Trainer, train
from detlab.heads.yolo import YOLOLoss
from detlab.models import MODELS, ModelFamily, architecture
from detlab.models.yolov3 import LEVELS, YOLOv3, default_anchors


@dataclass
class ToyConfig:
    size: int = 48
    neck: list[int] = field(default_factory=lambda: [8, 16, 32])
    flavour: str = field(default="plain", metadata={"choices": ("plain", "spicy")})


@dataclass(frozen=True)
class GroupedLetterbox(SquareLetterbox):
    group_by_aspect = True


def build_toy(cfg, num_classes: int, class_names=None) -> YOLOv3:
    backbone = build_backbone(cfg.backbone, cfg.weights, LEVELS)
    return YOLOv3(backbone, num_classes, default_anchors(cfg.toy.size), cfg.toy.size, cfg.toy.neck, YOLOLoss(),
                  score_threshold=cfg.score_threshold)


SETTINGS = ["model.name=toy", "data.synthetic_train=8", "data.synthetic_val=4", "data.synthetic_size=64",
            "train.batch_size=4", "train.epochs=1", "train.eval_every=1", "train.device=cpu"]


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(MODELS, "toy", ModelFamily(ToyConfig, build_toy, lambda cfg: GroupedLetterbox(cfg.toy.size),
                                                   ("size", "neck")))


def test_the_toy_family_has_its_own_validated_section(toy):
    cfg = load_config(None, SETTINGS + ["model.toy.size=32"])
    assert cfg.model.toy == ToyConfig(size=32) and architecture(cfg.model) == {
        "model.name": "toy", "model.backbone": "resnet18", "model.toy.size": 32, "model.toy.neck": [8, 16, 32]}
    with pytest.raises(ConfigError, match="model.toy.flavour = 'mild' is not valid; valid choices: plain, spicy"):
        load_config(None, SETTINGS + ["model.toy.flavour=mild"])
    with pytest.raises(ConfigError, match="model.yolov3 is the section of model 'yolov3', but model.name is 'toy'"):
        load_config(None, SETTINGS + ["model.yolov3.image_size=64"])


def test_the_engine_trains_resumes_and_predicts_a_second_family(toy, tmp_path, monkeypatch):
    cfg = load_config(None, SETTINGS + [f"train.out_dir={tmp_path / 'run'}"])
    trainer = Trainer(cfg, print_fn=lambda *a: None)
    # the family's input pipeline shapes the training images and the batching
    assert trainer.inputs == GroupedLetterbox(48)
    image, _ = trainer.data.train[0]
    assert tuple(image.shape) == (3, 48, 48)
    grouped = []
    real_make_loader = trainer_module.make_loader
    monkeypatch.setattr(trainer_module, "make_loader",
                        lambda *a, **k: (grouped.append(k["group_by_aspect"]), real_make_loader(*a, **k))[1])
    summary = trainer.fit()
    assert grouped == [True] and summary["best_epoch"] == 1
    last = tmp_path / "run" / "last.pt"
    assert torch.load(last, weights_only=True)["config"]["model"]["toy"]["size"] == 48
    # resume compares the family's architecture keys
    other = Trainer(load_config(None, SETTINGS + ["model.toy.neck=[8,16,16]", f"train.out_dir={tmp_path / 'b'}"]),
                    print_fn=lambda *a: None)
    with pytest.raises(CheckpointError, match=r"model.toy.neck: \[8, 16, 32\] there, \[8, 16, 16\] here"):
        other.resume(last)
    resumed = train(load_config(None, SETTINGS + ["train.epochs=2", f"train.out_dir={tmp_path / 'run'}"]),
                    resume=last, print_fn=lambda *a: None)
    assert resumed["best_epoch"] in (1, 2)
    detector = Detector.from_checkpoint(tmp_path / "run" / "best.pt", device="cpu",
                                        overrides=["model.score_threshold=0.0"])
    result = detector.predict(torch.randint(0, 255, (3, 40, 70), dtype=torch.uint8), score_threshold=0.0)
    assert len(result["boxes"]) > 0 and (result["boxes"][:, 2] <= 70).all()
    with pytest.raises(ConfigError, match="model.toy.size = 64 would change the architecture"):
        Detector.from_checkpoint(tmp_path / "run" / "best.pt", overrides=["model.toy.size=64"])


@pytest.mark.parametrize("name", ["yolov3", "faster_rcnn"])
@pytest.mark.parametrize("image, message", [
    (torch.zeros(3, 0, 5), r"images: an image has no pixels: shape \(3, 0, 5\)"),
    (torch.zeros(3, 7, 0), r"images: an image has no pixels: shape \(3, 7, 0\)"),
    (torch.zeros(1, 7, 5), r"images: each must be Tensor\[3, H, W\], got \(1, 7, 5\)"),
    (torch.zeros(7, 5, 3).numpy(), r"images: each must be Tensor\[3, H, W\], got ndarray"),
])
def test_every_family_refuses_an_image_without_pixels_or_channels(name, image, message):
    from detlab.models import build_model

    cfg = load_config(None, [f"model.name={name}"])
    model = build_model(cfg.model, 2, ["a", "b"]).eval()
    with pytest.raises(ValueError, match=message):
        model([torch.zeros(3, 8, 8), image])

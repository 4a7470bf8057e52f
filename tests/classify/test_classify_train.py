"""End-to-end classification runs (tiny: a few images, 1-2 epochs, 32 px), their checkpoints as the detection
base, early stopping, the lr schedule and the CLI."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from detlab.backbones import build_backbone
from detlab.classify import ClassifyConfig, load_classifier, train
from detlab.classify.trainer import lr_factor

REPO = Path(__file__).resolve().parents[2]


def tiny_config(out_dir, **overrides) -> ClassifyConfig:
    settings = dict(synthetic_train=24, synthetic_val=12, image_size=32, epochs=2, batch_size=8,
                    out_dir=str(out_dir), name="run", progress=False)
    return ClassifyConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    config = tiny_config(tmp_path_factory.mktemp("runs"))
    report = train(config)
    return config, report, Path(config.out_dir) / config.name


def test_run_writes_checkpoints_plots_report_and_log(synthetic_run):
    config, report, out = synthetic_run
    for name in ("best.pt", "last.pt", "history.png", "confusion_matrix.png", "report.json", "train.log"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.tmp"))
    assert json.loads((out / "report.json").read_text()) == report
    assert report["epochs_run"] == 2 and len(report["confusion_matrix"]) == 4
    assert sum(map(sum, report["confusion_matrix"])) == config.synthetic_val
    assert set(report["per_class_accuracy"]) == {"rectangle", "ellipse", "triangle", "star"}
    log = (out / "train.log").read_text()
    assert "transfer full: 11,178,564 trainable parameters" in log and "images/s" in log


def test_checkpoint_is_self_describing_and_weights_only(synthetic_run):
    config, _, out = synthetic_run
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    assert checkpoint["backbone"] == "resnet18" and checkpoint["classes"] == ["rectangle", "ellipse", "triangle",
                                                                                "star"]
    assert checkpoint["weights"] is None and checkpoint["epoch"] == 2 and checkpoint["detlab_version"]
    assert checkpoint["config"]["image_size"] == config.image_size
    assert checkpoint["mean"] == [0.485, 0.456, 0.406]
    assert len(checkpoint["history"]["val_acc"]) == 2


def test_checkpoint_loads_as_detection_backbone(synthetic_run):
    _, _, out = synthetic_run
    checkpoint = torch.load(out / "best.pt", weights_only=True)
    backbone = build_backbone("resnet18", weights=str(out / "best.pt"), levels=("c3", "c4", "c5"))
    assert backbone.weights == str(out / "best.pt")
    state = backbone.state_dict()
    assert len(state) == sum(key.startswith("backbone.") for key in checkpoint["model"])
    for key, value in state.items():
        assert torch.equal(value, checkpoint["model"]["backbone." + key]), key
    # and the classifier itself comes back identical
    model, _ = load_classifier(out / "best.pt")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(images)["c5"], backbone.eval()(images)["c5"])


def test_checkpoint_of_another_backbone_is_refused(synthetic_run):
    _, _, out = synthetic_run
    with pytest.raises(ValueError, match=f"{out / 'best.pt'}.*backbone 'resnet18'.*backbone 'resnet34'"):
        build_backbone("resnet34", weights=str(out / "best.pt"))


def test_binary_image_folder_run_with_every_option(tmp_path):
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "pretrained.pth")
    for split, count in (("train", 6), ("val", 3)):
        for name, colour in (("blue", (20, 20, 220)), ("red", (220, 20, 20))):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 30), colour).save(tmp_path / "data" / split / name / f"{i}.jpg")
    config = tiny_config(tmp_path, dataset="folder", data_dir=str(tmp_path / "data"), backbone="mobilenet_v3_small",
                         weights=str(tmp_path / "pretrained.pth"), transfer="partial:1", head="mlp", dropout=0.2, optimizer="adam", lr=1e-3,
                         schedule="cosine", warmup_epochs=1, augment=True, amp="bf16", freeze_all_bn=True,
                         batch_size=4)
    report = train(config)
    assert report["classes"] == ["blue", "red"] and len(report["confusion_matrix"]) == 2
    model, checkpoint = load_classifier(tmp_path / "run" / "best.pt")
    assert model.head[-1].out_features == 1  # two classes: one logit, binary cross-entropy
    assert checkpoint["config"]["transfer"] == "partial:1" and checkpoint["config"]["amp"] == "bf16"
    assert checkpoint["weights"] == str(tmp_path / "pretrained.pth")
    # a pretrained backbone fine-tunes with a tenth of the head's learning rate by default
    assert "backbone lr=0.0001" in (tmp_path / "run" / "train.log").read_text()


def test_early_stopping_after_patience_epochs(tmp_path):
    # nothing can change with a frozen backbone and a learning rate whose steps vanish below float32's resolution
    # (lr must be > 0): epoch 1 stays the best
    config = tiny_config(tmp_path, transfer="feature_extract", lr=1e-12, epochs=6, patience=2)
    report = train(config)
    assert report["best_epoch"] == 1 and report["epochs_run"] == 3
    assert "early stopping" in (tmp_path / "run" / "train.log").read_text()


def test_lr_factor_matches_steplr_and_warms_up():
    """The classification schedule is the engine's: ``step`` is StepLR(step_size, gamma), warmup ramps linearly."""
    config = ClassifyConfig(epochs=20)
    factor = lr_factor(config, 5)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    reference = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    for epoch in range(20):
        for step in range(5):
            assert factor(epoch * 5 + step) == pytest.approx(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    warm = lr_factor(ClassifyConfig(epochs=10, warmup_epochs=2, schedule="cosine"), 10)
    assert warm(0) == pytest.approx(0.01) and warm(10) == pytest.approx(0.505) and warm(20) == pytest.approx(1.0)
    assert warm(19) == pytest.approx(0.01 + 0.99 * 19 / 20)
    assert warm(60) == pytest.approx(0.5) and warm(100) == pytest.approx(0.0)  # cosine after the warmup, down to 0
    floor = lr_factor(ClassifyConfig(epochs=10, schedule="cosine", final_lr_fraction=0.1), 10)
    assert floor(0) == pytest.approx(1.0) and floor(50) == pytest.approx(0.55) and floor(100) == pytest.approx(0.1)


def _cli():
    spec = importlib.util.spec_from_file_location("train_cls", REPO / "tools" / "train_cls.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_cli_maps_options_onto_the_config():
    cli = _cli()
    config = cli.parse_args(["--epochs", "3", "--augment", "--backbone-lr-mult", "0.5", "--transfer", "partial:2",
                             "--weights", "imagenet", "--amp", "bf16", "--threads", "1"])
    assert config == ClassifyConfig(epochs=3, augment=True, backbone_lr_mult=0.5, transfer="partial:2",
                                    weights="imagenet", amp="bf16", threads=1)
    # the older flag names stay as aliases
    old = cli.parse_args(["--strategy", "feature_extract", "--scheduler", "cosine", "--workers", "2"])
    assert (old.transfer, old.schedule, old.num_workers) == ("feature_extract", "cosine", 2)
    with pytest.raises(ValueError, match="optimizer = 'rmsprop' is not valid; valid choices: sgd, adam, adamw"):
        cli.parse_args(["--optimizer", "rmsprop"])
    with pytest.raises(ValueError, match="amp = 'yes' is not valid; valid choices: off, fp16, bf16"):
        cli.parse_args(["--amp", "yes"])


def test_cli_reads_config_files_and_set_before_its_flags(tmp_path, capsys):
    (tmp_path / "base.yaml").write_text("epochs: 4\nlr: 0.01\nbackbone: mobilenet_v3_small\n")
    (tmp_path / "cls.yaml").write_text("base: base.yaml\nlr: 0.02\nbatch_size: 16\n")
    cli = _cli()
    config = cli.parse_args(["--config", str(tmp_path / "cls.yaml"), "--set", "batch_size=8", "threads=2",
                             "--epochs", "6"])
    # defaults < base < file < --set < flags
    assert (config.epochs, config.lr, config.batch_size, config.threads) == (6, 0.02, 8, 2)
    assert config.backbone == "mobilenet_v3_small" and config.optimizer == "adam"
    (tmp_path / "bad.yaml").write_text("epochz: 4\n")
    assert cli.main(["--config", str(tmp_path / "bad.yaml")]) == 2
    assert f"error: {tmp_path / 'bad.yaml'}: unknown key 'epochz'; valid keys: dataset, " in capsys.readouterr().err

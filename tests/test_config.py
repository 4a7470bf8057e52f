import dataclasses
import re
from pathlib import Path

import pytest

from detlab.config import (MOVED_KEYS, Config, ConfigError, ModelConfig, config_from_dict, config_to_dict, load_config,
                           migrate_flat_layout)
from detlab.models.yolov3 import YOLOv3Config

CONFIGS = Path(__file__).parents[1] / "configs"


def test_defaults_are_the_synthetic_experiment():
    cfg = load_config()
    assert cfg.data.dataset == "synthetic" and cfg.model.name == "yolov3"
    assert cfg == Config()
    assert isinstance(cfg.model.section, YOLOv3Config) and cfg.model.yolov3 is cfg.model.section
    assert cfg.model.yolov3.image_size == 128


def test_dotted_overrides_parse_yaml_values():
    cfg = load_config(None, ["train.epochs=50", "model.backbone=resnet50", "model.yolov3.neck_channels=[32, 64, 128]",
                             "train.lr=1e-3", "model.weights=null", "train.clip_grad_norm=null", "data.years=2012"])
    assert cfg.train.epochs == 50 and cfg.model.backbone == "resnet50"
    assert cfg.model.yolov3.neck_channels == [32, 64, 128]
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.model.weights is None and cfg.train.clip_grad_norm is None
    assert cfg.data.years == ["2012"]


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  backbone: mobilenet_v3_large\n  yolov3:\n    box_loss: giou\n"
                    "train:\n  epochs: 7\n  lr: 0.02\n")
    cfg = load_config(path, ["train.epochs=9"])
    assert cfg.model.backbone == "mobilenet_v3_large" and cfg.train.epochs == 9 and cfg.train.lr == 0.02
    assert cfg.model.yolov3.box_loss == "giou" and cfg.model.yolov3.image_size == 128


YOLO_KEYS = "model.yolov3.{image_size, neck_channels, anchors, box_loss"


@pytest.mark.parametrize("override, message", [
    ("train.epochz=5", r"unknown key 'train.epochz'; valid keys: .*train.epochs"),
    ("trian.epochs=5", r"unknown key 'trian'; valid keys: model, data, train$"),
    ("model.backbone=resnet19", r"model.backbone = 'resnet19' is not valid; valid choices: .*resnet18.*"
                                r"mobilenet_v3_large"),
    ("model.name=yolov4", r"model.name = 'yolov4' is not valid; valid choices: yolov3"),
    ("train.optimizer=rmsprop", r"train.optimizer = 'rmsprop' is not valid; valid choices: sgd, adam, adamw"),
    ("train.amp=fp8", r"train.amp = 'fp8' is not valid; valid choices: off, fp16, bf16"),
    ("data.dataset=kitti", r"data.dataset = 'kitti' is not valid; valid choices: synthetic, voc, flat_voc, yolo, coco"),
    ("train.epochs=many", r"train.epochs: expected int, got 'many'"),
    ("model.yolov3.neck_channels=[1, x]", r"model.yolov3.neck_channels\[1\]: expected int"),
    ("train.epochs", r"expected key=value"),
    ("train=5", r"train must be a mapping of train.epochs, "),
    # nested: the family's own section is validated like the others, and listed where a key is unknown
    ("model.yolov3.anchorz=null", r"unknown key 'model.yolov3.anchorz'; valid keys: model.yolov3.image_size, "
                                  r"model.yolov3.neck_channels, model.yolov3.anchors,"),
    ("model.yolov3.box_loss=l1", r"model.yolov3.box_loss = 'l1' is not valid; valid choices: paper, giou, ciou"),
    ("model.yolov3.image_size=big", r"model.yolov3.image_size: expected int, got 'big'"),
    ("model.yolov3=5", r"model.yolov3 must be a mapping of model.yolov3.image_size, "),
    ("model.depth=3", r"unknown key 'model.depth'; valid keys: model.name, .*model.max_detections, " + YOLO_KEYS),
    # the flat layout of detlab 0.1 says where its keys went
    ("model.image_size=416", r"model.image_size is now model.yolov3.image_size"),
    ("data.year=2012", r"data.year is now data.years"),
    # values that have a form to follow
    ("model.name=[a, b]", r"model.name = \['a', 'b'\] is not valid; valid choices: yolov3"),
    ("data.train_splits=[]", r"data.train_splits = \[\] must list at least one entry"),
    ("data.val_years=[]", r"data.val_years = \[\] must list at least one entry"),
    ("train.threads=0", r"train.threads = 0 must be at least 1 \(null: torch's default\)"),
    ("train.device=gpu", r"train.device = 'gpu' is not a device; valid: auto .*cpu, cuda, cuda:N"),
    ("train.device=meta", r"train.device = 'meta' is a meta device; detlab trains and predicts on cpu or cuda"),
    ("train.transfer=bogus", r"train.transfer = 'bogus' is not a transfer strategy; valid: feature_extract, "
                             r"partial:N \(N >= 1 trained stages\), full"),
    ("train.transfer=partial:0", r"train.transfer = 'partial:0' is not a transfer strategy"),
])  # fmt: skip
def test_bad_overrides_name_the_key_and_the_choices(override, message):
    with pytest.raises(ConfigError, match=re.escape(f"override {override!r}: ") + message):
        load_config(None, [override])


def test_choices_come_from_the_code_that_defines_them(monkeypatch):
    from detlab.backbones import BACKBONES
    from detlab.config import DataConfig, TrainConfig
    from detlab.engine.data import DATASETS
    from detlab.engine.optim import OPTIMIZERS, SCHEDULES
    from detlab.engine.runtime import AMP_DTYPES
    from detlab.heads.yolo import BOX_LOSSES
    from detlab.models import MODELS

    def choices(cls, name):
        return cls.__dataclass_fields__[name].metadata["choices"]

    # the very tables, not copies
    assert choices(ModelConfig, "name") is MODELS and choices(ModelConfig, "backbone") is BACKBONES
    assert choices(YOLOv3Config, "box_loss") is BOX_LOSSES and choices(DataConfig, "dataset") is DATASETS
    assert choices(TrainConfig, "optimizer") is OPTIMIZERS and choices(TrainConfig, "schedule") is SCHEDULES
    assert choices(TrainConfig, "amp") is AMP_DTYPES
    monkeypatch.setitem(BACKBONES, "resnet152", BACKBONES["resnet101"])
    assert load_config(None, ["model.backbone=resnet152"]).model.backbone == "resnet152"


def test_the_section_of_another_family_is_an_error(tmp_path, monkeypatch):
    from detlab.models import MODELS, ModelFamily

    monkeypatch.setitem(MODELS, "other", ModelFamily(YOLOv3Config, None, None, ()))
    with pytest.raises(ConfigError, match=r"model.other is the section of model 'other', but model.name is 'yolov3'"):
        load_config(None, ["model.other.image_size=64"])
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: other\n")
    # the name is known from the file before the override's section is checked
    cfg = load_config(path, ["model.other.image_size=64"])
    assert cfg.model.name == "other" and cfg.model.other.image_size == 64
    with pytest.raises(ConfigError, match=rf"override 'model.yolov3.image_size=64': model.yolov3 is the section of "
                                          rf"model 'yolov3', but model.name is 'other'"):
        load_config(path, ["model.yolov3.image_size=64"])
    with pytest.raises(AttributeError, match="model.name is 'other': its section is model.other"):
        cfg.model.yolov3


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbone: resnet18\n  depth: 3\n")
    with pytest.raises(ConfigError, match=rf"{bad}: unknown key 'model.depth'; valid keys: model.name"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  backbone: resnet18\n train: [\n")
    with pytest.raises(ConfigError, match=rf"{broken}:3:2: YAML syntax error"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- model\n")
    with pytest.raises(ConfigError, match=rf"{listed}: expected a mapping of sections, got list"):
        load_config(listed)


def test_base_chains_merge_key_by_key(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("model:\n  backbone: resnet50\n  yolov3:\n    image_size: 416\n"
                                     "    box_loss: giou\ntrain:\n  epochs: 50\n  lr: 0.01\n")
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\nmodel:\n  yolov3:\n    image_size: 320\n"
                                             "train:\n  epochs: 20\n")
    (tmp_path / "c.yaml").write_text("base: sub/b.yaml\ntrain:\n  lr: 0.001\n")
    cfg = load_config(tmp_path / "c.yaml", ["train.batch_size=4"])
    # each file states only what differs; everything else comes from the chain (base paths relative to the file)
    assert cfg.model.backbone == "resnet50" and cfg.model.yolov3.box_loss == "giou"
    assert cfg.model.yolov3.image_size == 320 and cfg.train.epochs == 20 and cfg.train.lr == 0.001
    assert cfg.train.batch_size == 4 and cfg.model.yolov3.neck_channels == [64, 128, 256]
    # an error in a base names that file
    (tmp_path / "a.yaml").write_text("train:\n  epochz: 50\n")
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'sub' / '..' / 'a.yaml'}: unknown key 'train.epochz'"):
        load_config(tmp_path / "c.yaml")


def test_base_lists_apply_in_order_then_the_file(tmp_path):
    (tmp_path / "data.yaml").write_text("data:\n  dataset: voc\n  years: [2007, 2012]\n  num_workers: 4\n")
    (tmp_path / "recipe.yaml").write_text("train:\n  epochs: 50\n  lr: 0.01\ndata:\n  num_workers: 2\n")
    (tmp_path / "run.yaml").write_text("base: [data.yaml, recipe.yaml]\ntrain:\n  lr: 0.02\n")
    cfg = load_config(tmp_path / "run.yaml")
    assert cfg.data.dataset == "voc" and cfg.data.years == ["2007", "2012"]
    assert cfg.data.num_workers == 2 and cfg.train.epochs == 50 and cfg.train.lr == 0.02
    # the same base reached twice (a diamond) is no cycle
    (tmp_path / "twice.yaml").write_text("base: [run.yaml, data.yaml]\n")
    assert load_config(tmp_path / "twice.yaml").data.num_workers == 4


def test_base_cycles_and_missing_bases_are_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: c.yaml\n")
    (tmp_path / "c.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"config files start from each other in a cycle: .*a.yaml -> .*b.yaml -> "
                                          r".*c.yaml -> .*a.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "self.yaml").write_text("base: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "self.yaml")
    (tmp_path / "d.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=rf"nowhere.yaml does not exist \(a base of {tmp_path / 'd.yaml'}\)"):
        load_config(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("base: {a: 1}\n")
    with pytest.raises(ConfigError, match="base must be the path of another config file or a list of them"):
        load_config(tmp_path / "e.yaml")


def test_splits_and_years_take_lists_or_a_single_string(tmp_path):
    path = tmp_path / "voc.yaml"
    path.write_text("data:\n  years: [2007, 2012]\n  train_splits: trainval\n  val_years: 2007\n"
                    "  val_splits: [test]\n")
    data = load_config(path).data
    assert data.years == ["2007", "2012"] and data.train_splits == ["trainval"]
    assert data.val_years == ["2007"] and data.val_splits == ["test"]
    with pytest.raises(ConfigError, match=r"data.train_splits: expected list\[str\] \| None, got True"):
        load_config(None, ["data.train_splits=true"])


def test_dict_round_trip_puts_the_section_under_the_family_name():
    cfg = load_config(None, ["train.epochs=3", "model.yolov3.image_size=96"])
    data = config_to_dict(cfg)
    assert data["model"]["yolov3"]["image_size"] == 96 and "section" not in data["model"]
    assert "image_size" not in data["model"]
    assert config_from_dict(data) == cfg
    assert ModelConfig(name="yolov3").section == YOLOv3Config()


def test_a_model_config_holds_only_its_own_familys_section(monkeypatch):
    import copy
    import dataclasses
    import pickle

    from detlab.models import MODELS, ModelFamily

    @dataclasses.dataclass
    class OtherConfig:
        size: int = 1

    monkeypatch.setitem(MODELS, "other", ModelFamily(OtherConfig, None, None, ()))
    model = load_config(None, ["model.yolov3.image_size=96"]).model
    with pytest.raises(ValueError, match="model.other: the section must be a OtherConfig, got a YOLOv3Config"):
        dataclasses.replace(model, name="other")
    assert dataclasses.replace(model, weights="imagenet").yolov3.image_size == 96
    for clone in (copy.copy(model), copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone == model and clone.yolov3.image_size == 96


def test_migration_of_the_flat_layout():
    flat = {"model": {"name": "yolov3", "image_size": 320, "neck_channels": [8, 16, 32], "box_loss": "paper",
                      "score_threshold": 0.2},
            "data": {"year": "2012", "train_split": "train", "val_split": "val"}, "train": {"epochs": 3}}
    migrated = migrate_flat_layout(flat)
    assert migrated == {"model": {"name": "yolov3", "score_threshold": 0.2,
                                  "yolov3": {"image_size": 320, "neck_channels": [8, 16, 32], "box_loss": "paper"}},
                        "data": {"years": "2012", "train_splits": "train", "val_splits": "val"},
                        "train": {"epochs": 3}}
    cfg = config_from_dict(migrated)
    assert cfg.model.yolov3.image_size == 320 and cfg.data.years == ["2012"] and cfg.data.val_splits == ["val"]
    assert flat["model"]["image_size"] == 320  # the input is not modified
    assert set(MOVED_KEYS.values()) <= {f"model.yolov3.{k}" for k in YOLOv3Config.__dataclass_fields__} | {
        "data.years", "data.train_splits", "data.val_splits"}


def test_shipped_configs_load_and_the_variants_inherit():
    configs = sorted(CONFIGS.glob("*.yaml"))
    assert len(configs) >= 8
    loaded = {path.stem: load_config(path) for path in configs}
    voc, voc0712 = loaded["yolov3_resnet50_voc"], loaded["yolov3_resnet50_voc0712"]
    assert voc.data.years == ["2007"] and voc.data.train_splits == ["trainval"] and voc.data.val_splits == ["test"]
    assert voc0712.data.years == ["2007", "2012"] and voc0712.data.val_years == ["2007"]
    assert voc0712.model == voc.model and voc0712.train.epochs == voc.train.epochs == 50
    mobile = loaded["yolov3_mobilenet_v3_large_coco"]
    assert mobile.model.backbone == "mobilenet_v3_large" and mobile.data.dataset == "coco"
    assert mobile.model.yolov3.image_size == 416 and mobile.train.amp == "bf16" and mobile.train.optimizer == "sgd"
    assert mobile.data.train_splits == ["train2017"] and mobile.data.val_splits == ["val2017"]
    for name in ("yolov3_resnet50_voc", "yolov3_resnet50_voc0712", "yolov3_resnet50_coco",
                 "yolov3_mobilenet_v3_large_voc", "yolov3_mobilenet_v3_large_coco"):
        recipe = loaded[name].train
        assert (recipe.optimizer, recipe.lr, recipe.momentum, recipe.backbone_lr_mult, recipe.time_limit) == (
            "sgd", 0.01, 0.937, 0.1, None), name
    # Faster R-CNN: one recipe, the variants state what differs
    r50 = loaded["faster_rcnn_resnet50_fpn_voc"]
    assert (r50.model.name, r50.model.backbone, r50.model.weights) == ("faster_rcnn", "resnet50", "imagenet")
    assert (r50.train.optimizer, r50.train.schedule, r50.train.transfer) == ("sgd", "step", "partial:3")
    c4 = loaded["faster_rcnn_resnet50_c4_voc"]
    assert c4.model.faster_rcnn.neck == "c4" and c4.train == dataclasses.replace(
        r50.train, out_dir="runs/faster_rcnn_resnet50_c4_voc")
    small = loaded["faster_rcnn_mobilenet_v3_large_320_fpn_coco"]
    assert small.model.weights == "fasterrcnn_mobilenet_v3_large_320_fpn" and small.data.dataset == "coco"
    assert (small.model.faster_rcnn.min_size, small.model.faster_rcnn.rpn_post_nms_top_n_test,
            small.model.faster_rcnn.rpn_score_threshold, small.train.transfer) == (320, 150, 0.05, "partial:2")
    cells = loaded["faster_rcnn_voc_cells"]
    assert cells.data.dataset == "voc" and cells.model.faster_rcnn.min_size == 160 and cells.train.epochs == 8
    assert cells.train.lr == loaded["yolov3_voc_cells"].train.lr  # the same budget as YOLOv3's voc-cells run
    # the data-only bases fit any model
    for path in sorted((CONFIGS / "datasets").glob("*.yaml")):
        assert load_config(path).model == ModelConfig()


# ---- values checked when the config loads (not deep inside torch)

BAD_VALUES = [
    ("train.batch_size=0", "train.batch_size = 0 must be at least 1"),
    ("train.epochs=-1", "train.epochs = -1 must be at least 1"),
    ("train.epochs=0", "train.epochs = 0 must be at least 1"),
    ("train.eval_every=0", "train.eval_every = 0 must be at least 1 (more than train.epochs evaluates only the last "
                           "epoch)"),
    ("train.threads=-2", "train.threads = -2 must be at least 1 (null: torch's default)"),
    ("data.num_workers=-1", "data.num_workers = -1 must be at least 0 (0: load in the training process)"),
    ("train.lr=-1", "train.lr = -1.0 must be greater than 0"),
    ("train.lr=0", "train.lr = 0.0 must be greater than 0"),
    ("train.weight_decay=-1e-4", "train.weight_decay = -0.0001 must be at least 0"),
    ("train.momentum=1", "train.momentum = 1.0 must lie in [0, 1)"),
    ("train.time_limit=0", "train.time_limit = 0.0 must be greater than 0 (null: no limit)"),
    ("data.scale_jitter=[0.5, 2]", "data.scale_jitter = [0.5, 2.0] has entry [0] = 0.5, which must be at least 1"),
    ("train.transfer=partial:6", "train.transfer = 'partial:6' trains more stages than a backbone has: N of "
                                 "partial:N must be in 1..5 (stem, c2, c3, c4, c5)"),
    ("model.score_threshold=1.5", "model.score_threshold = 1.5 must lie in [0, 1]"),
    ("model.yolov3.image_size=100", "model.yolov3.image_size = 100 must be a positive multiple of 32 (the stride of "
                                    "c5)"),
    ("model.yolov3.image_size=0", "model.yolov3.image_size = 0 must be a positive multiple of 32 (the stride of c5)"),
    ("model.yolov3.neck_channels=[64, 128]", "model.yolov3.neck_channels = [64, 128] must list 3 entries (one per "
                                             "level c3, c4, c5), not 2"),
    ("model.yolov3.neck_channels=[64, 0, 256]", "model.yolov3.neck_channels = [64, 0, 256] has entry [1] = 0, which "
                                                "must be at least 1"),
    ("model.yolov3.anchors=[[10, 13], [16, 30]]", "model.yolov3.anchors = [[10.0, 13.0], [16.0, 30.0]] must list 9 "
                                                  "entries ((w, h), 3 per level), not 2"),
]  # fmt: skip
NINE = [[10, 13]] * 8


@pytest.mark.parametrize("override, message", [
    *BAD_VALUES,
    (f"model.yolov3.anchors={NINE + [[5, 6, 7]]}", "has entry [8] = [5.0, 6.0, 7.0], which must list 2 entries "
                                                   "(w, h), not 3"),
    (f"model.yolov3.anchors={NINE + [[5, -6]]}", "has entry [8][1] = -6.0, which must be greater than 0"),
])  # fmt: skip
def test_bad_values_name_the_key_and_the_value(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert str(error.value).startswith(f"override {override!r}: ") and str(error.value).endswith(message)


FASTER_RCNN = "model.name=faster_rcnn"
MOBILENET = "model.backbone=mobilenet_v3_large"


@pytest.mark.parametrize("overrides, message", [
    ([FASTER_RCNN, "model.faster_rcnn.anchor_sizes=[[32], [64]]"],
     "model.faster_rcnn.anchor_sizes = [[32.0], [64.0]] must list 5 levels of sizes (the maps the RPN of neck fpn on "
     "resnet18 reads), not 2"),
    ([FASTER_RCNN, MOBILENET, "model.faster_rcnn.anchor_sizes=[[32], [64], [128], [256], [512]]"],
     "model.faster_rcnn.anchor_sizes = [[32.0], [64.0], [128.0], [256.0], [512.0]] must list 3 levels of sizes (the "
     "maps the RPN of neck fpn on mobilenet_v3_large reads), not 5"),
    ([FASTER_RCNN, "model.faster_rcnn.neck=c4", "model.faster_rcnn.anchor_sizes=[[32], [64]]"],
     "model.faster_rcnn.anchor_sizes = [[32.0], [64.0]] must list 1 levels of sizes (the maps the RPN of neck c4 on "
     "resnet18 reads), not 2"),
    ([FASTER_RCNN, "model.faster_rcnn.anchor_sizes=[[32], [64, 90], [128], [256], [512]]"],
     "model.faster_rcnn.anchor_sizes = [[32.0], [64.0, 90.0], [128.0], [256.0], [512.0]] must give every level the "
     "same number of sizes (one RPN head serves all levels)"),
    ([FASTER_RCNN, "model.faster_rcnn.anchor_sizes=[[32], [], [128], [256], [512]]"],
     "model.faster_rcnn.anchor_sizes = [[32.0], [], [128.0], [256.0], [512.0]] has entry [1] = [], which must list "
     "at least one entry"),
    ([FASTER_RCNN, MOBILENET, "model.faster_rcnn.neck=c4"],
     "model.faster_rcnn.neck = 'c4' needs a ResNet backbone (res5 is its box head), not model.backbone "
     "'mobilenet_v3_large'; use neck fpn"),
    ([FASTER_RCNN, "model.faster_rcnn.min_size=0"], "model.faster_rcnn.min_size = 0 must be at least 1"),
])  # fmt: skip
def test_faster_rcnn_levels_must_fit_the_backbone_and_neck(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert str(error.value) == f"override {overrides[-1]!r}: {message}"
    # every default fits: one size per FPN level of a ResNet, all sizes on each map otherwise
    for neck, backbone in (("fpn", "resnet18"), ("fpn", "mobilenet_v3_large"), ("c4", "resnet50")):
        load_config(None, [FASTER_RCNN, f"model.backbone={backbone}", f"model.faster_rcnn.neck={neck}"])


def test_a_check_across_keys_names_where_the_key_was_set(tmp_path):
    path = tmp_path / "frcnn.yaml"
    path.write_text("model:\n  name: faster_rcnn\n  faster_rcnn:\n    anchor_sizes: [[16], [32], [64], [128], [256]]\n")
    assert load_config(path).model.faster_rcnn.anchor_sizes == [[16], [32], [64], [128], [256]]
    # the override changes the backbone; the key that no longer fits was set in the file
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: model.faster_rcnn.anchor_sizes = .* must list 3 "
                                          rf"levels of sizes \(the maps the RPN of neck fpn on mobilenet_v3_large"):
        load_config(path, [MOBILENET])


def test_the_device_and_amp_must_exist_here_but_a_stored_config_loads_anywhere(monkeypatch, tmp_path):
    import torch

    from detlab.engine.runtime import DeviceError, resolve_device
    from detlab.errors import DetlabError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=re.escape("override 'train.device=cuda': train.device = 'cuda' asks for "
                                                    "CUDA, but no CUDA GPU is visible here; use auto or cpu")):
        load_config(None, ["train.device=cuda"])
    # where a device is given outside a config (Detector, --device of eval_det.py and predict.py)
    with pytest.raises(DeviceError, match=re.escape("device 'cuda' asks for CUDA, but no CUDA GPU is visible here")):
        resolve_device("cuda")
    assert issubclass(DeviceError, DetlabError) and resolve_device("auto") == torch.device("cpu")
    stored = config_to_dict(load_config(None, ["train.amp=bf16"]))
    stored["train"]["device"] = "cuda:1"  # trained on a GPU machine
    assert config_from_dict(stored).train.device == "cuda:1"  # a checkpoint's config still loads here ...
    assert load_config(None, ["model.score_threshold=0.2"], base=stored).train.device == "cuda:1"  # ... and adapts
    # a GPU machine: an index past its GPUs; bfloat16 on a GPU without it (torch would refuse or disable autocast)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    with pytest.raises(ConfigError, match=re.escape("train.device = 'cuda:2' asks for GPU 2, but this machine has 2 "
                                                    "(cuda:0 .. cuda:1)")):
        load_config(None, ["train.device=cuda:2"])
    path = tmp_path / "bf16.yaml"
    path.write_text("train:\n  amp: bf16\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: train.amp = 'bf16' is not supported on cuda "
                                          rf"\(.*bfloat16.*\); use off, or another mode$"):
        load_config(path, ["train.device=cuda"])
    assert load_config(path, ["train.device=cuda", "train.amp=fp16"]).train.amp == "fp16"


def test_classification_checks_the_keys_it_shares_with_detection_alike(monkeypatch):
    import torch

    from detlab.classify import ClassifyConfig, load_classify_config
    from detlab.config import TrainConfig

    shared = ("batch_size", "epochs", "lr", "weight_decay", "momentum", "transfer", "threads", "device")
    cases = [(override.removeprefix("train."), message.removeprefix("train.")) for override, message in BAD_VALUES
             if override.removeprefix("train.").split("=")[0] in shared]
    assert len(cases) == 9
    for override, message in cases:
        with pytest.raises(ConfigError) as error:
            load_classify_config(None, [override])
        assert str(error.value) == f"override {override!r}: {message}"
    with pytest.raises(ConfigError, match=re.escape("override 'num_workers=-1': num_workers = -1 must be at least 0 "
                                                    "(0: load in the training process)")):
        load_classify_config(None, ["num_workers=-1"])
    with pytest.raises(ConfigError, match=re.escape("command line: batch_size = 0 must be at least 1")):
        load_classify_config(None, values={"batch_size": 0})
    with pytest.raises(ConfigError, match=re.escape("step_size = 0 must be at least 1")):
        ClassifyConfig(step_size=0)  # built in Python: checked too
    with pytest.raises(ConfigError, match=re.escape("dataset = 'folder' needs data_dir")):
        ClassifyConfig(dataset="folder")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=re.escape("override 'device=cuda': device = 'cuda' asks for CUDA, but no "
                                                    "CUDA GPU is visible here; use auto or cpu")):
        load_classify_config(None, ["device=cuda"])
    assert load_classify_config(None, ["amp=bf16"]).amp == "bf16"  # the CPU runs bfloat16 autocast
    # one check per shared key, not a copy
    for name in shared:
        assert ClassifyConfig.__dataclass_fields__[name].metadata["check"] is \
            TrainConfig.__dataclass_fields__[name].metadata["check"], name


def test_config_files_that_cannot_be_read(tmp_path):
    with pytest.raises(ConfigError, match=rf"^config file {re.escape(str(tmp_path))} cannot be read: Is a directory$"):
        load_config(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"train:\n  epochs: \xff\xfe\n")
    with pytest.raises(ConfigError, match=rf"^config file {re.escape(str(binary))} cannot be read: not UTF-8 text$"):
        load_config(binary)
    control = tmp_path / "control.yaml"
    control.write_text("train:\n  epochs: 5\x07\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(control))}: YAML syntax error: unacceptable character "
                                          rf"#x0007: special characters are not allowed$"):
        load_config(control)

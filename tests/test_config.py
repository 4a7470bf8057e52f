import pytest

from detlab.config import Config, ConfigError, config_from_dict, config_to_dict, load_config


def test_defaults_are_the_synthetic_experiment():
    cfg = load_config()
    assert cfg.data.dataset == "synthetic" and cfg.model.name == "yolov3"
    assert cfg == Config()


def test_dotted_overrides_parse_yaml_values():
    cfg = load_config(None, ["train.epochs=50", "model.backbone=resnet50", "model.neck_channels=[32, 64, 128]",
                             "train.lr=1e-3", "model.weights=null", "train.clip_grad_norm=null", "data.year=2012"])
    assert cfg.train.epochs == 50 and cfg.model.backbone == "resnet50"
    assert cfg.model.neck_channels == [32, 64, 128]
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.model.weights is None and cfg.train.clip_grad_norm is None
    assert cfg.data.year == "2012"


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  backbone: mobilenet_v3_large\ntrain:\n  epochs: 7\n  lr: 0.02\n")
    cfg = load_config(path, ["train.epochs=9"])
    assert cfg.model.backbone == "mobilenet_v3_large" and cfg.train.epochs == 9 and cfg.train.lr == 0.02


@pytest.mark.parametrize("override, message", [
    ("train.epochz=5", r"unknown key 'train.epochz'; valid keys: .*train.epochs"),
    ("trian.epochs=5", r"unknown key 'trian'; valid keys: model, data, train"),
    ("model.backbone=resnet19", r"model.backbone = 'resnet19' is not valid; valid choices: .*resnet18.*mobilenet_v3_large"),
    ("train.optimizer=adam", r"valid choices: sgd, adamw"),
    ("train.epochs=many", r"train.epochs: expected int, got 'many'"),
    ("model.neck_channels=[1, x]", r"model.neck_channels\[1\]: expected int"),
    ("train.epochs", r"expected section.key=value"),
    ("train=5", r"train must be a mapping"),
])  # fmt: skip
def test_bad_overrides_name_the_key_and_the_choices(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbone: resnet18\n  depth: 3\n")
    with pytest.raises(ConfigError, match=rf"{bad}: unknown key 'model.depth'; valid keys: model.name"):
        load_config(bad)


def test_dict_round_trip():
    cfg = load_config(None, ["train.epochs=3"])
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 6
    for path in configs:
        load_config(path)

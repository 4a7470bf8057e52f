"""Detection experiment configuration: dataclasses, YAML loading and dotted command-line overrides.

    cfg = load_config("configs/yolov3_resnet50_voc.yaml", ["train.epochs=50", "model.backbone=resnet18"])

A YAML file holds any subset of the three sections ``model``, ``data``, ``train``; everything else keeps the
defaults below (the defaults are the synthetic-shapes experiment of ``python tools/train_det.py``). An unknown
section or key, a value of the wrong type or an unknown choice is an error that names the key and lists the
valid ones.
"""

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from detlab.backbones import BACKBONES


@dataclass
class ModelConfig:
    name: str = "yolov3"
    backbone: str = "resnet18"
    weights: str | None = None  # None (random init), "imagenet", or a checkpoint path (see detlab.backbones)
    image_size: int = 128  # side of the square letterboxed input
    neck_channels: list[int] = field(default_factory=lambda: [64, 128, 256])  # per level, stride 8 first (paper: 128, 256, 512)
    anchors: list[list[float]] | None = None  # nine (w, h) in input pixels; None: the paper's, scaled from 416
    box_loss: str = "ciou"  # paper | giou | ciou
    ignore_threshold: float = 0.5
    multi_anchor_threshold: float | None = 0.25  # also assign every anchor with shape IoU above it (None: paper)
    neighbour_cells: bool = True  # also assign the 2 adjacent cells nearest each centre (YOLOv5); false: the paper
    score_threshold: float = 0.01
    nms_threshold: float = 0.45
    max_detections: int = 100
    multi_label: bool = True  # inference: a box under every class above the threshold, or only its best one


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # synthetic | voc | coco
    root: str | None = None  # voc: the folder holding VOCdevkit; coco: the folder holding annotations/
    year: str = "2007"  # voc
    train_split: str = "trainval"  # voc: ImageSets/Main/<split>.txt; coco: images <root>/<split>, instances_<split>
    val_split: str = "test"
    val_on_train: bool = False  # evaluate on the training images (memorisation checks)
    max_train_images: int | None = None  # keep the first N training images
    synthetic_train: int = 960  # synthetic: number of images (train seed = seed, val seed = seed + 1)
    synthetic_val: int = 100
    synthetic_size: int = 128
    flip: bool = True
    scale_jitter: list[float] | None = None  # [low, high] zoom-in factors (>= 1), then crop back to image_size
    photometric: bool = False
    num_workers: int = 0  # 0: load in the training process (best on a 2-core CPU)


@dataclass
class TrainConfig:
    epochs: int = 14  # the most; train.time_limit may cut them
    batch_size: int = 8
    optimizer: str = "adamw"  # sgd | adamw
    lr: float = 1.5e-3
    momentum: float = 0.9  # sgd momentum / adamw beta1
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    schedule: str = "cosine"  # cosine | step
    milestones: list[float] = field(default_factory=lambda: [0.8, 0.9])  # step: fractions of the epochs
    gamma: float = 0.1
    amp: str = "off"  # off | fp16 | bf16
    clip_grad_norm: float | None = 10.0
    ema: bool = True
    ema_decay: float = 0.9998
    ema_tau: float = 500.0  # iterations over which the EMA decay ramps up (early weights move fast)
    eval_every: int = 5  # epochs; the last epoch is always evaluated
    # minutes of training (evaluations included); when the epochs would take longer, train fewer with the LR
    # schedule ending at the last of them (checked after every epoch). None: always train.epochs
    time_limit: float | None = 14.0
    transfer: str = "full"  # feature_extract | partial:N | full (detlab.transfer)
    backbone_lr_mult: float | None = None  # backbone LR = lr * this; None: 0.1 with pretrained weights, else 1
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads; None: torch's default
    out_dir: str = "runs/yolov3_synthetic"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# dotted key -> allowed values; checked on load so a typo fails before any work starts
CHOICES = {
    "model.name": ("yolov3",),
    "model.backbone": tuple(BACKBONES),
    "model.box_loss": ("paper", "giou", "ciou"),
    "data.dataset": ("synthetic", "voc", "coco"),
    "train.optimizer": ("sgd", "adamw"),
    "train.schedule": ("cosine", "step"),
    "train.amp": ("off", "fp16", "bf16"),
}


class ConfigError(ValueError):
    """A bad configuration: the message names the file or option and the key."""


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> Config:
    """Defaults (or the config dict ``base``, e.g. a checkpoint's), updated by the YAML file ``path`` (if any),
    then by ``overrides`` (``"section.key=value"``, value parsed as YAML: ``train.epochs=5``,
    ``model.neck_channels=[64,128,256]``, ``model.weights=null``)."""
    data = config_to_dict(Config())
    if base is not None:
        _merge(data, base, "base config")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections ({', '.join(data)}), got {type(loaded).__name__}")
        _merge(data, loaded, str(path))
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise ConfigError(f"override {override!r}: expected section.key=value")
        *sections, last = key.strip().split(".")
        _merge(data, _nest(sections + [last], yaml.safe_load(value)), f"override {override!r}")
    return config_from_dict(data)


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (YAML / checkpoint ready)."""
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict, source: str = "config") -> Config:
    """A :class:`Config` from a (possibly partial) nested dict, every value checked."""
    merged = config_to_dict(Config())
    _merge(merged, data, source)
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    cfg = Config(**{name: _build_section(cls, merged[name], f"{source}: {name}") for name, cls in sections.items()})
    for dotted, allowed in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ConfigError(f"{source}: {dotted} = {value!r} is not valid; valid choices: {', '.join(allowed)}")
    return cfg


def _nest(keys: list[str], value) -> dict:
    return {keys[0]: _nest(keys[1:], value)} if len(keys) > 1 else {keys[0]: value}


def _merge(into: dict, update: dict, source: str, prefix: str = "") -> None:
    """Recursive update of ``into`` by ``update`` refusing keys ``into`` does not have."""
    for key, value in update.items():
        if key not in into:
            valid = ", ".join(prefix + k for k in into)
            raise ConfigError(f"{source}: unknown key {prefix + str(key)!r}; valid keys: {valid}")
        if isinstance(into[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {prefix + key} must be a mapping of {', '.join(into[key])}")
            _merge(into[key], value, source, f"{prefix}{key}.")
        else:
            into[key] = value


def _build_section(cls, values: dict, where: str):
    hints = typing.get_type_hints(cls)
    return cls(**{name: _checked(value, hints[name], f"{where}.{name}") for name, value in values.items()})


def _checked(value, hint, where: str):
    """``value`` converted to ``hint`` (int -> float, list -> list of the element type) or ConfigError."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{where}: must not be null (expected {_name(hint)})")
    for option in (o for o in options if o is not type(None)):
        origin = typing.get_origin(option)
        if origin is list and isinstance(value, (list, tuple)):
            (element,) = typing.get_args(option)
            return [_checked(v, element, f"{where}[{i}]") for i, v in enumerate(value)]
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is float and isinstance(value, str) and _is_float(value):
            return float(value)  # YAML 1.1 reads `1e-3` (no dot) as a string
        if option is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `year: 2007` in YAML is an int
        if option in (int, bool, str) and type(value) is option:
            return value
    raise ConfigError(f"{where}: expected {_name(hint)}, got {value!r}")


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _name(hint) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")

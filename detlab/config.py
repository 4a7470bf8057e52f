"""Experiment configuration: dataclasses, YAML loading with ``base:`` inheritance, dotted command-line overrides.

    cfg = load_config("configs/yolov3_resnet50_voc.yaml", ["train.epochs=50", "model.yolov3.image_size=320"])

A detection config holds any subset of the sections ``model``, ``data`` and ``train``; whatever it leaves out
keeps the defaults below (the synthetic-shapes experiment of ``python tools/train_det.py``)::

    base: yolov3_resnet50_voc.yaml   # optional: start from that file (or a list), relative to this one
    model:
      name: yolov3                   # a key of detlab.models.MODELS
      backbone: resnet50             # shared keys stay flat ...
      score_threshold: 0.001
      yolov3:                        # ... the family's own keys live in its section
        image_size: 416
    data: {dataset: voc, years: [2007, 2012], train_splits: trainval}
    train: {epochs: 50}

Every value is checked when it is read, and the message (one line, a :class:`ConfigError`) names the file or
override it came from, the key and the value: an unknown key (listing the valid ones at that level, sections
included), a value of the wrong type, a choice that the code defining it does not know (``choices`` in a field's
metadata: the model table, ``BACKBONES``, the YOLO box losses, the optimizers ...), or a value its field's ``check``
refuses (:mod:`detlab.settings`: counts at least 1, ``lr`` above 0, one entry per level ...). Then come the checks
across keys, each naming where its key was set: the family's section against ``model.backbone`` and, for a config
to run here, ``train.device`` and ``train.amp`` against this machine. The section of a family other than
``model.name`` is an error. A key of the flat layout that detlab 0.1 wrote (``model.image_size``, ``data.year``, ...)
is named with its new place; :func:`migrate_flat_layout` converts such a config, as the checkpoints of that release
hold it.

:func:`load_dataclass` is the same machinery for any flat dataclass (the classification config).
"""

import copy
import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from detlab.backbones import BACKBONES, LEVEL_STRIDES
from detlab.errors import DetlabError
from detlab.engine.data import DATASETS
from detlab.engine.optim import OPTIMIZERS, SCHEDULES
from detlab.engine.runtime import AMP_DTYPES, device_problem, machine_problems, threads_problem
from detlab.models import MODELS, model_family
from detlab.settings import above, at_least, choice, entries, nonempty, setting, within
from detlab.transfer import strategy_problem

#: The stages of every backbone, in order (the contract of :class:`detlab.backbones.Backbone`): what the N of
#: ``transfer: partial:N`` counts.
BACKBONE_STAGES = ("stem", *LEVEL_STRIDES)


def transfer_problem(strategy: str) -> str | None:
    """What is wrong with a ``transfer`` setting: its form (:func:`detlab.transfer.strategy_problem`), or an N of
    ``partial:N`` past the backbone's stages."""
    problem = strategy_problem(strategy)
    if problem is None and strategy.startswith("partial:") and int(strategy[len("partial:"):]) > len(BACKBONE_STAGES):
        return (f"trains more stages than a backbone has: N of partial:N must be in 1..{len(BACKBONE_STAGES)} "
                f"({', '.join(BACKBONE_STAGES)})")
    return problem


#: The checks of the settings detection and classification share (the same names, values and meanings).
BATCH_SIZE = at_least(1)
EPOCHS = at_least(1)
LR = above(0)
WEIGHT_DECAY = at_least(0)
MOMENTUM = within(0, 1, high_included=False)
WARMUP_EPOCHS = at_least(0)
BACKBONE_LR_MULT = at_least(0)
NUM_WORKERS = at_least(0, "0: load in the training process")


@dataclass
class ModelConfig:
    """The ``model`` section: the keys every family has, and ``section``, the family's own (``model.<name>``).

    ``section`` is an instance of ``MODELS[name].config`` (e.g. :class:`detlab.models.yolov3.YOLOv3Config`); it
    also reads under the family's name, as in YAML: ``cfg.model.yolov3.image_size``.
    """

    name: str = choice("yolov3", MODELS)
    backbone: str = choice("resnet18", BACKBONES)
    # None (random init), "imagenet", a backbone or classification checkpoint (detlab.backbones), a torchvision
    # detector (detlab.models.torchvision_detectors), or a detlab detection checkpoint (detlab.models.finetune)
    weights: str | None = None
    score_threshold: float = setting(0.01, check=within(0, 1))  # inference: keep detections scoring above it
    nms_threshold: float = setting(0.45, check=within(0, 1))  # inference: per-class NMS IoU
    max_detections: int = setting(100, check=at_least(1))  # inference: per image
    section: typing.Any = None  # MODELS[name].config(); None: its defaults

    def __post_init__(self):
        family = model_family(self.name)
        if self.section is None:
            self.section = family.config()
        elif not isinstance(self.section, family.config):
            raise ValueError(f"model.{self.name}: the section must be a {family.config.__name__}, got a "
                             f"{type(self.section).__name__} (the section of another family?)")

    def __getattr__(self, name: str):
        # only reached for attributes that do not exist: the family's name reads its section
        if name == self.__dict__.get("name") and "section" in self.__dict__:
            return self.__dict__["section"]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r} (model.name is "
                             f"{self.__dict__.get('name')!r}: its section is model.{self.__dict__.get('name')})")


@dataclass
class DataConfig:
    dataset: str = choice("synthetic", DATASETS)
    # voc: the folder holding VOCdevkit; coco: the folder holding annotations/; yolo: the dataset YAML;
    # flat_voc: the folder of XMLs
    root: str | None = None
    images: str | None = None  # flat_voc: the images' folder; None: root (images beside the XMLs)
    # voc: VOCdevkit/VOC<year> (a single year works)
    years: list[str] = setting(default_factory=lambda: ["2007"], check=nonempty)
    val_years: list[str] | None = setting(None, check=nonempty)  # voc: the validation splits' years; None: years
    # voc: ImageSets/Main/<split>.txt of every year; coco: images <root>/<split>, annotations/instances_<split>.json;
    # yolo: keys of the dataset YAML; flat_voc: list files of XML stems or file names (relative to root unless
    # found as given). None: the format's own (voc trainval/test, coco train2017/val2017, yolo train/val,
    # flat_voc a seeded data.val_fraction split)
    train_splits: list[str] | None = setting(None, check=nonempty)
    val_splits: list[str] | None = setting(None, check=nonempty)
    val_fraction: float = setting(0.2, check=lambda v: None if 0 < v < 1 else "must lie between 0 and 1")
    # the class names in label order; then a name outside it (and outside ignore_classes) in the annotations is
    # an error. None: the names found (printed with their box counts when training starts)
    classes: list[str] | None = setting(None, check=nonempty)
    ignore_classes: list[str] = field(default_factory=list)  # names of ignore regions (e.g. [ignore, DontCare])
    keep_backgrounds: bool = True  # train on images without objects (negatives only); false leaves them out
    strict: bool = False  # raise on what readers otherwise fix with a counted warning (boxes, duplicates, ...)
    # leave out training/validation images that are missing, truncated or undecodable (one counted warning when
    # the datasets are built) instead of raising naming the first of them
    skip_bad_images: bool = False
    val_on_train: bool = False  # evaluate on the training images (memorisation checks)
    max_train_images: int | None = setting(None, check=at_least(1))  # keep the first N training images; None: all
    # synthetic: number of images (train seed = seed, val seed = seed + 1)
    synthetic_train: int = setting(960, check=at_least(1))
    synthetic_val: int = setting(100, check=at_least(1))
    synthetic_size: int = setting(128, check=at_least(1))
    flip: bool = True
    # [low, high] zoom-in factors (>= 1), then crop back to the input size; None: no zoom
    scale_jitter: list[float] | None = setting(None, check=entries(2, "low, high", each=at_least(1)))
    photometric: bool = False
    # loader worker processes; 0: load in the training process (best on a 2-core CPU)
    num_workers: int = setting(0, check=NUM_WORKERS)


@dataclass
class TrainConfig:
    epochs: int = setting(14, check=EPOCHS)  # the most, >= 1; train.time_limit may cut them
    # images per step and process, >= 1 (torchrun: N processes train on N x batch_size per step, LR x N)
    batch_size: int = setting(8, check=BATCH_SIZE)
    optimizer: str = choice("adamw", OPTIMIZERS)
    lr: float = setting(1.5e-3, check=LR)  # > 0
    momentum: float = setting(0.9, check=MOMENTUM)  # sgd momentum / adam(w) beta1, in [0, 1)
    nesterov: bool = True  # sgd
    weight_decay: float = setting(5e-4, check=WEIGHT_DECAY)  # >= 0 (0: none)
    warmup_epochs: float = setting(1.0, check=WARMUP_EPOCHS)  # >= 0 (0: none)
    schedule: str = choice("cosine", SCHEDULES)
    # cosine: the LR at the end, as a fraction of lr
    final_lr_fraction: float = setting(0.01, check=within(0, 1))
    # step: fractions of the epochs
    milestones: list[float] = setting(default_factory=lambda: [0.8, 0.9], check=entries(each=within(0, 1)))
    gamma: float = setting(0.1, check=above(0))  # step: LR factor at each milestone
    amp: str = choice("off", AMP_DTYPES)  # checked against train.device when a config to run here loads
    clip_grad_norm: float | None = setting(10.0, check=above(0))  # None: no clipping
    ema: bool = True
    ema_decay: float = setting(0.9998, check=within(0, 1))
    # iterations over which the EMA decay ramps up (early weights move fast)
    ema_tau: float = setting(500.0, check=above(0))
    # epochs between evaluations, >= 1 (more than train.epochs: only the last); the last epoch is always evaluated
    eval_every: int = setting(5, check=at_least(1, "more than train.epochs evaluates only the last epoch"))
    # minutes of training (evaluations included); when the epochs would take longer, train fewer with the LR
    # schedule ending at the last of them (checked after every epoch). None: always train.epochs
    time_limit: float | None = setting(14.0, check=above(0, "null: no limit"))
    # feature_extract | partial:N (the last N of the backbone's 5 stages train) | full (detlab.transfer)
    transfer: str = setting("full", check=transfer_problem)
    # backbone LR = lr * this (>= 0); None: 0.1 with pretrained weights, else 1
    backbone_lr_mult: float | None = setting(None, check=BACKBONE_LR_MULT)
    # freeze every BatchNorm of the model (statistics and affine), head included: for small batches per process
    freeze_all_bn: bool = False
    # torchrun on GPUs: BatchNorm statistics over all processes' images (torch's SyncBatchNorm, CUDA only)
    sync_bn: bool = False
    seed: int = 0
    # auto (CUDA when visible, else CPU) | cpu | cuda | cuda:N; checked against this machine when a config to run
    # here loads (load_config without base), not in a checkpoint's stored config
    device: str = setting("auto", check=device_problem)
    threads: int | None = setting(None, check=threads_problem)  # torch CPU threads, >= 1; None: torch's default
    out_dir: str = "runs/yolov3_synthetic"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class ConfigError(DetlabError, ValueError):
    """A bad configuration: the message names the file or option and the key."""


#: Where the keys of detlab 0.1's flat layout (checkpoint format ``detlab.detect/1``) live now.
MOVED_KEYS = {
    **{f"model.{key}": f"model.yolov3.{key}" for key in (
        "image_size", "neck_channels", "anchors", "box_loss", "ignore_threshold", "multi_anchor_threshold",
        "neighbour_cells", "multi_label")},
    "data.year": "data.years",
    "data.train_split": "data.train_splits",
    "data.val_split": "data.val_splits",
}  # fmt: skip


# ---- loading


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> Config:
    """Defaults (or the config dict ``base``, e.g. a checkpoint's), updated by the YAML file ``path`` (if any, after
    the files it inherits from), then by ``overrides`` (``"section.key=value"``, value parsed as YAML:
    ``train.epochs=5``, ``model.yolov3.neck_channels=[64,128,256]``, ``model.weights=null``).

    Without ``base`` this is a config to run here: ``train.device`` and ``train.amp`` are checked against this
    machine too (:func:`detlab.engine.runtime.machine_problems`). A stored config (``base``,
    :func:`config_from_dict`) loads on any machine: a checkpoint trained on a GPU still predicts on a CPU."""
    layers = [("base config", base)] if base is not None else []
    if path is not None:
        layers += read_yaml_layers(path)
    return config_from_layers(layers + parse_overrides(overrides), here=base is None)


def config_from_dict(data: dict, source: str = "config") -> Config:
    """A :class:`Config` from a (possibly partial) nested dict, every value checked (not against this machine)."""
    return config_from_layers([(source, data)])


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (YAML / checkpoint ready); the model's section under its family's name."""
    data = dataclasses.asdict(cfg)
    data["model"][cfg.model.name] = data["model"].pop("section")
    return data


def config_from_layers(layers: list[tuple[str, dict]], here: bool = False) -> Config:
    """The defaults updated by each ``(source, nested dict)`` in turn; errors name the source. ``here``: check
    ``train.device`` and ``train.amp`` against this machine."""
    name_source, name = "defaults", ModelConfig.name
    for source, layer in layers:
        given = layer.get("model") if isinstance(layer, dict) else None
        if isinstance(given, dict) and "name" in given:
            name_source, name = source, given["name"]
    if not isinstance(name, str) or name not in MODELS:
        raise ConfigError(f"{name_source}: model.name = {name!r} is not valid; valid choices: {', '.join(MODELS)}")
    data = config_to_dict(Config(model=ModelConfig(name=name)))
    schema = _schema(Config)
    schema["model"].pop("section")
    schema["model"][name] = _schema(model_family(name).config)

    def explain(dotted: str) -> str | None:
        family = dotted.removeprefix("model.")
        if dotted.startswith("model.") and family in MODELS:
            return (f"model.{family} is the section of model {family!r}, but model.name is {name!r}: remove it, "
                    f"or set model.name: {family}")
        if dotted in MOVED_KEYS:
            return f"{dotted} is now {MOVED_KEYS[dotted]}"
        return None

    sources = _merge_layers(data, schema, layers, explain)
    model = dict(data["model"])
    section = model_family(name).config(**model.pop(name))
    cfg = Config(model=ModelConfig(**model, section=section), data=DataConfig(**data["data"]),
                 train=TrainConfig(**data["train"]))
    _refuse(_combined_problems(cfg, here), data, sources)
    return cfg


def _combined_problems(cfg: Config, here: bool) -> dict[str, str]:
    """``{dotted key: problem}`` of the checks across keys: the family's section against ``model.backbone`` (its
    method ``problems(backbone)``, where it has one) and, ``here``, the machine's."""
    family_problems = getattr(cfg.model.section, "problems", None)
    found = family_problems(cfg.model.backbone) if family_problems is not None else {}
    problems = {f"model.{cfg.model.name}.{key}": problem for key, problem in found.items()}
    if here:
        problems.update({f"train.{key}": problem
                         for key, problem in machine_problems(cfg.train.device, cfg.train.amp).items()})
    return problems


def load_dataclass(cls, path: str | Path | None = None, overrides: list[str] = (), values: dict | None = None,
                   problems=None):
    """An instance of the flat dataclass ``cls``: its defaults, updated by the YAML file ``path`` (with its
    ``base:`` chain), by ``overrides`` (``"key=value"``) and by ``values`` (already typed, e.g. parsed flags).
    ``problems(instance) -> {key: problem}`` checks across keys; its error names where the key was set."""
    layers = read_yaml_layers(path) if path is not None else []
    layers += parse_overrides(overrides)
    if values:
        layers.append(("command line", values))
    data = dataclasses.asdict(cls())
    sources = _merge_layers(data, _schema(cls), layers, lambda dotted: None)
    instance = cls(**data)
    if problems is not None:
        _refuse(problems(instance), data, sources)
    return instance


def read_yaml_layers(path: str | Path, _chain: tuple[Path, ...] = ()) -> list[tuple[str, dict]]:
    """``[(file, dict), ...]`` of ``path`` and the files it starts from, the most basic first. ``base:`` names one
    file or a list of files (paths relative to this one), read in order, each with its own bases; this file's keys
    then apply on top. A missing or unreadable file, a YAML syntax error (file, line, column) or a cycle of bases is
    a ConfigError."""
    path = Path(path)
    named_by = f" (a base of {_chain[-1]})" if _chain else ""
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist{named_by}")
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain[_chain.index(path.resolve()):], path.resolve()))
        raise ConfigError(f"config files start from each other in a cycle: {cycle}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:  # a folder, no permission, not text
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ConfigError(f"config file {path}{named_by} cannot be read: {reason}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {_yaml_problem(error)}") from None
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
    bases = loaded.pop("base", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(base, str) for base in bases):
        raise ConfigError(f"{path}: base must be the path of another config file or a list of them, got {bases!r}")
    layers = []
    for base in bases:
        layers += read_yaml_layers(path.parent / base, (*_chain, path.resolve()))
    return layers + [(str(path), loaded)]


def parse_overrides(overrides: list[str]) -> list[tuple[str, dict]]:
    """``["train.epochs=5", ...]`` -> ``[("override 'train.epochs=5'", {"train": {"epochs": 5}}), ...]``."""
    layers = []
    for override in overrides:
        key, sep, value = override.partition("=")
        source = f"override {override!r}"
        if not sep or not key.strip():
            raise ConfigError(f"{source}: expected key=value (e.g. train.epochs=5)")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise ConfigError(f"{source}: the value is not valid YAML ({_yaml_problem(error)})") from None
        layers.append((source, _nest(key.strip().split("."), parsed)))
    return layers


def _yaml_problem(error: yaml.YAMLError) -> str:
    """What a YAML error says, in one line (a marked error's ``problem``; the first line of the others)."""
    return getattr(error, "problem", None) or str(error).splitlines()[0]


def migrate_flat_layout(data: dict) -> dict:
    """A config dict of detlab 0.1's flat layout (YOLO keys directly under ``model``, one VOC ``year`` and one
    split each) in today's layout (:data:`MOVED_KEYS`); a config already in today's layout comes back unchanged."""
    data = copy.deepcopy(data)
    for old, new in MOVED_KEYS.items():
        old_section, old_key = old.split(".")
        section = data.get(old_section)
        if isinstance(section, dict) and old_key in section:
            *parents, last = new.split(".")
            target = data
            for parent in parents:
                target = target.setdefault(parent, {})
            target[last] = section.pop(old_key)
    return data


# ---- checking


@dataclass(frozen=True)
class _Leaf:
    hint: typing.Any
    choices: typing.Any = None
    check: typing.Any = None


def _schema(cls) -> dict:
    """``{key: _Leaf or nested schema}`` of a dataclass (fields whose type is a dataclass are nested)."""
    hints = typing.get_type_hints(cls)
    return {f.name: _schema(hints[f.name]) if dataclasses.is_dataclass(hints[f.name])
            else _Leaf(hints[f.name], f.metadata.get("choices"), f.metadata.get("check"))
            for f in dataclasses.fields(cls)}


def _nest(keys: list[str], value) -> dict:
    return {keys[0]: _nest(keys[1:], value)} if len(keys) > 1 else {keys[0]: value}


def _merge_layers(data: dict, schema: dict, layers: list[tuple[str, dict]], explain) -> dict[str, str]:
    """Update ``data`` by each ``(source, layer)`` in turn (:func:`_merge`); ``{dotted key: the source that set it
    last}``."""
    sources = {}
    for source, layer in layers:
        _merge(data, layer, schema, source, explain, sources)
    return sources


def _refuse(problems: dict[str, str], data: dict, sources: dict[str, str]) -> None:
    """ConfigError for the first of ``problems`` (``{dotted key: problem}``), naming the key's value in ``data``
    (nested) and where it was set."""
    if problems:
        key, problem = next(iter(problems.items()))
        value = functools.reduce(lambda level, name: level[name], key.split("."), data)
        raise ConfigError(f"{sources.get(key, 'defaults')}: {key} = {value!r} {problem}")


def _merge(into: dict, update, schema: dict, source: str, explain, sources: dict, prefix: str = "") -> None:
    """Recursive update of ``into`` by ``update``, every key and value checked against ``schema``; ``sources``
    records each key's source."""
    if not isinstance(update, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the config'} must be a mapping of "
                          f"{_keys(schema, prefix)}, got {update!r}")
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            reason = explain(dotted) or f"unknown key {dotted!r}; valid keys: {_keys(schema, prefix)}"
            raise ConfigError(f"{source}: {reason}")
        if isinstance(schema[key], dict):
            _merge(into[key], value, schema[key], source, explain, sources, f"{dotted}.")
            continue
        leaf = schema[key]
        checked = _checked(value, leaf.hint, f"{source}: {dotted}")
        problem = _problem(checked, leaf.choices, leaf.check)
        if problem:
            raise ConfigError(f"{source}: {dotted} = {checked!r} {problem}")
        into[key], sources[dotted] = checked, source


def _problem(value, choices, check) -> str | None:
    """What is wrong with a typed value: not among ``choices``, or what ``check`` says."""
    if choices is not None and value not in choices:
        return f"is not valid; valid choices: {', '.join(choices)}"
    return check(value) if check is not None else None


def _keys(schema: dict, prefix: str) -> str:
    """The keys of a schema level; below the top, a nested section as ``prefix.section.{a, b, ...}``."""
    if not prefix:
        return ", ".join(schema)
    return ", ".join(f"{prefix}{key}.{{{', '.join(sub)}}}" if isinstance(sub, dict) else f"{prefix}{key}"
                     for key, sub in schema.items())


def _checked(value, hint, where: str):
    """``value`` converted to ``hint`` (int -> float, list -> list of the element type, a single string for a
    list of strings) or ConfigError."""
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
        if origin is list and typing.get_args(option) == (str,) and isinstance(value, (str, int)) \
                and not isinstance(value, bool):
            return [str(value)]  # `years: 2007`, `train_splits: trainval`: one entry
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is float and isinstance(value, str) and _is_float(value):
            return float(value)  # YAML 1.1 reads `1e-3` (no dot) as a string
        if option is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `year: 2007` in YAML is an int
        if option in (int, bool, str) and type(value) is option:
            return value
    raise ConfigError(f"{where}: expected {_name(hint)}, got {value!r}")


def check_settings(obj) -> None:
    """Raise ConfigError for a field of the dataclass instance ``obj`` that its ``choices`` or ``check`` refuse
    (the load-time checks, for a dataclass built directly in Python)."""
    for f in dataclasses.fields(obj):
        problem = _problem(getattr(obj, f.name), f.metadata.get("choices"), f.metadata.get("check"))
        if problem:
            raise ConfigError(f"{f.name} = {getattr(obj, f.name)!r} {problem}")


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _name(hint) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")

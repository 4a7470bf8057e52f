"""The classification experiment: one flat dataclass, every field a plain value (it is stored in checkpoints).

    config = load_classify_config("my.yaml", ["epochs=5", "transfer=partial:2"])

Settings that detection has too carry the same names, values and checks (``device``, ``amp``, ``threads``,
``optimizer``, ``schedule``, ``transfer``, ``num_workers``, ``batch_size``, ``lr``, ...), and the choices come from
the code that defines them: the datasets of :mod:`detlab.classify.data`, the heads of :mod:`detlab.classify.model`,
``BACKBONES``, and the engine's optimizers, schedules and AMP modes. :func:`load_classify_config` checks ``device``
and ``amp`` against this machine too.
"""

from dataclasses import dataclass
from pathlib import Path

from detlab.backbones import BACKBONES
from detlab.classify.data import DATASETS
from detlab.classify.model import HEADS
from detlab.config import (BACKBONE_LR_MULT, BATCH_SIZE, EPOCHS, LR, MOMENTUM, NUM_WORKERS, WARMUP_EPOCHS,
                           WEIGHT_DECAY, ConfigError, check_settings, load_dataclass, transfer_problem)
from detlab.engine.optim import OPTIMIZERS, SCHEDULES
from detlab.engine.runtime import AMP_DTYPES, device_problem, machine_problems, threads_problem
from detlab.settings import above, at_least, setting, within


def _help(text: str, default, choices=None, check=None):
    return setting(default, choices=choices, check=check, help=text)


@dataclass
class ClassifyConfig:
    """Everything :func:`detlab.classify.train` needs; ``tools/train_cls.py`` exposes each field as ``--field-name``
    (and reads them from ``--config`` / ``--set`` too)."""

    # data
    dataset: str = _help("synthetic (shapes, generated on the fly) | folder (train/<class>/*, val/<class>/*) "
                         "| cifar10 (python-format batches)", "synthetic", DATASETS)
    data_dir: str = _help("root of the folder / cifar10 dataset", "")
    image_size: int = _help("images are resized to image_size x image_size", 64, check=at_least(1))
    synthetic_train: int = _help("number of synthetic training images", 2500, check=at_least(1))
    synthetic_val: int = _help("number of synthetic validation images", 500, check=at_least(1))
    augment: bool = _help("random flip, rotation, zoom and colour jitter on training images", False)
    rotation: float = _help("augmentation: max rotation in degrees", 15.0)
    zoom: float = _help("augmentation: scale range 1 +- zoom", 0.1)
    color: float = _help("augmentation: brightness/contrast/saturation jitter", 0.2)
    num_workers: int = _help("data loader worker processes (0: load in the training process)", 0, check=NUM_WORKERS)
    # model
    backbone: str = _help("a name in detlab.backbones.BACKBONES", "resnet18", BACKBONES)
    weights: str | None = _help("imagenet | path to a state_dict or detlab checkpoint | none", None)
    head: str = _help("linear | mlp (Dense(128, relu) then the output layer)", "linear", HEADS)
    dropout: float = _help("dropout before the output layer", 0.0, check=within(0, 1, high_included=False))
    transfer: str = _help("feature_extract | partial:N (the last N of the backbone's 5 stages train) | full", "full",
                          check=transfer_problem)
    freeze_all_bn: bool = _help("freeze every BatchNorm (statistics and affine), for small batches", False)
    # optimisation
    epochs: int = _help("maximum number of epochs (>= 1)", 10, check=EPOCHS)
    batch_size: int = _help("images per step (>= 1)", 32, check=BATCH_SIZE)
    optimizer: str = _help("adam | adamw | sgd", "adam", OPTIMIZERS)
    lr: float = _help("learning rate of the new layers, > 0 (the seeds: sgd 0.001 when fine-tuning)", 1e-3, check=LR)
    momentum: float = _help("sgd momentum / adam(w) beta1, in [0, 1)", 0.9, check=MOMENTUM)
    nesterov: bool = _help("sgd: Nesterov momentum", False)
    backbone_lr_mult: float | None = _help("backbone lr = lr * this (>= 0); default 0.1 if pretrained, else 1", None,
                                           check=BACKBONE_LR_MULT)
    weight_decay: float = _help("weight decay (>= 0), not applied to norms and biases", 1e-4, check=WEIGHT_DECAY)
    schedule: str = _help("step (StepLR(step_size, gamma)) | cosine", "step", SCHEDULES)
    step_size: int = _help("step: decay the lr every step_size epochs (>= 1)", 7, check=at_least(1))
    gamma: float = _help("step: lr decay factor", 0.1, check=above(0))
    final_lr_fraction: float = _help("cosine: the lr at the end, as a fraction of lr", 0.0, check=within(0, 1))
    warmup_epochs: float = _help("linear lr warmup length in epochs (0: none)", 0.0, check=WARMUP_EPOCHS)
    patience: int = _help("stop after this many epochs without a better val accuracy (0: never)", 5,
                          check=at_least(0, "0: never stop early"))
    amp: str = _help("mixed precision: off | fp16 | bf16", "off", AMP_DTYPES)
    # run
    device: str = _help("auto (CUDA when visible, else CPU) | cpu | cuda | cuda:N", "auto", check=device_problem)
    threads: int | None = _help("CPU threads for torch (unset: torch's default); 1 is fastest on a busy shared CPU",
                                None, check=threads_problem)
    seed: int = _help("seed of the data, the init and the shuffling", 0)
    out_dir: str = _help("outputs go to out_dir/name", "runs/cls")
    name: str = _help("run name", "exp")
    progress: bool = _help("show tqdm progress bars", True)

    def __post_init__(self):
        check_settings(self)
        if self.dataset != "synthetic" and not self.data_dir:
            raise ConfigError(f"dataset = {self.dataset!r} needs data_dir (the root of the {self.dataset} dataset)")


def load_classify_config(path: str | Path | None = None, overrides: list[str] = (),
                         values: dict | None = None) -> ClassifyConfig:
    """The defaults, updated by the YAML file ``path`` (its ``base:`` chain first), by ``overrides``
    (``"epochs=5"``) and by ``values`` (e.g. the command line's flags); errors name the file or option. ``device``
    and ``amp`` are checked against this machine (:func:`detlab.engine.runtime.machine_problems`)."""
    return load_dataclass(ClassifyConfig, path, overrides, values,
                          problems=lambda config: machine_problems(config.device, config.amp))

"""The classification experiment: one dataclass, every field a plain value (it is stored in checkpoints)."""

from dataclasses import dataclass, field

DATASETS = ("synthetic", "folder", "cifar10")
OPTIMIZERS = ("sgd", "adam")
SCHEDULERS = ("step", "cosine")
HEADS = ("linear", "mlp")


def _help(text: str, default):
    return field(default=default, metadata={"help": text})


@dataclass
class ClassifyConfig:
    """Everything :func:`detlab.classify.train` needs; ``tools/train_cls.py`` exposes each field as ``--field-name``."""

    # data
    dataset: str = _help("synthetic (shapes, generated on the fly) | folder (train/<class>/*, val/<class>/*) "
                         "| cifar10 (python-format batches)", "synthetic")
    data_dir: str = _help("root of the folder / cifar10 dataset", "")
    image_size: int = _help("images are resized to image_size x image_size", 64)
    synthetic_train: int = _help("number of synthetic training images", 2500)
    synthetic_val: int = _help("number of synthetic validation images", 500)
    augment: bool = _help("random flip, rotation, zoom and colour jitter on training images", False)
    rotation: float = _help("augmentation: max rotation in degrees", 15.0)
    zoom: float = _help("augmentation: scale range 1 +- zoom", 0.1)
    color: float = _help("augmentation: brightness/contrast/saturation jitter", 0.2)
    # model
    backbone: str = _help("a name in detlab.backbones.BACKBONES", "resnet18")
    weights: str | None = _help("imagenet | path to a state_dict or detlab checkpoint | none", None)
    head: str = _help("linear | mlp (Dense(128, relu) then the output layer)", "linear")
    dropout: float = _help("dropout before the output layer", 0.0)
    strategy: str = _help("feature_extract | partial:N (last N backbone stages train) | full", "full")
    freeze_all_bn: bool = _help("freeze every BatchNorm (statistics and affine), for small batches", False)
    # optimisation
    epochs: int = _help("maximum number of epochs", 10)
    batch_size: int = _help("images per step", 32)
    optimizer: str = _help("adam | sgd (momentum 0.9)", "adam")
    lr: float = _help("learning rate of the new layers (the seeds: sgd 0.001 when fine-tuning)", 1e-3)
    backbone_lr_mult: float | None = _help("backbone lr = lr * this; default 0.1 if pretrained, else 1", None)
    weight_decay: float = _help("weight decay, not applied to norms and biases", 1e-4)
    scheduler: str = _help("step (StepLR(step_size, gamma)) | cosine", "step")
    step_size: int = _help("StepLR step size in epochs", 7)
    gamma: float = _help("StepLR decay factor", 0.1)
    warmup_epochs: float = _help("linear lr warmup length in epochs (0: none)", 0.0)
    patience: int = _help("stop after this many epochs without a better val accuracy (0: never)", 5)
    amp: bool = _help("mixed precision (bfloat16 on CPU, float16 on CUDA)", False)
    # run
    device: str = _help("auto | cpu | cuda | cuda:N", "auto")
    workers: int = _help("data loader worker processes", 0)
    threads: int = _help("CPU threads for torch (0: torch's default); 1 is fastest on a busy shared CPU", 0)
    seed: int = _help("seed of the data, the init and the shuffling", 0)
    out_dir: str = _help("outputs go to out_dir/name", "runs/cls")
    name: str = _help("run name", "exp")
    progress: bool = _help("show tqdm progress bars", True)

    def __post_init__(self):
        for name, valid in (("dataset", DATASETS), ("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS),
                            ("head", HEADS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name}={getattr(self, name)!r}; valid choices: {', '.join(valid)}")
        if self.dataset != "synthetic" and not self.data_dir:
            raise ValueError(f"dataset={self.dataset!r} needs data_dir")

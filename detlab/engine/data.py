"""Datasets of a :class:`detlab.config.DataConfig`: training set with augmentation, validation set without.

The geometry comes from the model family's input pipeline (:mod:`detlab.data.inputs`): the training images start
with its resize, and scale-jitter crops back to its crop size. Validation images stay untransformed: the model
prepares them itself and returns boxes in their pixels, so predictions and targets meet in original image pixels,
where the metric is defined.
"""

import copy
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset, Subset

from detlab.data import COCODetection, SyntheticShapes, VOCDetection
from detlab.data.records import concat_datasets
from detlab.data.transforms import Compose, PhotometricDistort, RandomCrop, RandomHorizontalFlip, RandomScaleJitter


@dataclass
class DetectionData:
    """train/val datasets, ``class_names`` (label order) and the ``metric`` their evaluation uses (voc | coco)."""

    train: Dataset
    val: Dataset
    class_names: list[str]
    metric: str


def train_transforms(cfg, inputs) -> Compose:
    """The input pipeline's resize, then (as configured) zoom in by a factor in ``scale_jitter`` and crop back to
    its crop size, flip, and distort colours."""
    steps = [inputs.resize()]
    if cfg.scale_jitter is not None:
        low, high = cfg.scale_jitter
        steps += [RandomScaleJitter(low, high), RandomCrop(inputs.crop_size)]
    if cfg.flip:
        steps.append(RandomHorizontalFlip())
    if cfg.photometric:
        steps.append(PhotometricDistort())
    return Compose(steps)


def _synthetic(cfg, augment: Compose, seed: int) -> DetectionData:
    shape = dict(height=cfg.synthetic_size, width=cfg.synthetic_size)
    train = SyntheticShapes(cfg.synthetic_train, seed=seed, transforms=augment, cache=True, **shape)
    val = SyntheticShapes(cfg.synthetic_val, seed=seed + 1, **shape)
    return DetectionData(train, val, list(SyntheticShapes.class_names), "voc")


def _voc(cfg, augment: Compose, seed: int) -> DetectionData:
    root = _existing(cfg.root, "data.root (the folder holding VOCdevkit)")
    # class names from the training annotations, so a VOC-layout dataset of other classes works as is
    train = VOCDetection(root, cfg.years, cfg.train_splits, discover_classes=True, transforms=augment)
    class_names = list(train.class_names)
    val_years = cfg.years if cfg.val_years is None else cfg.val_years
    val = VOCDetection(root, val_years, cfg.val_splits, classes=class_names)
    return DetectionData(train, val, class_names, "voc")


def _coco(cfg, augment: Compose, seed: int) -> DetectionData:
    root = _existing(cfg.root, "data.root (the folder holding annotations/)")

    def split(name: str, key: str, **options) -> COCODetection:
        return COCODetection(_existing(root / name, f"{key} images"),
                             _existing(root / "annotations" / f"instances_{name}.json", key), **options)

    train = concat_datasets([split(name, "data.train_splits", transforms=augment, keep_empty=False)
                             for name in cfg.train_splits], "data.train_splits")
    val = concat_datasets([split(name, "data.val_splits", include_crowd=True) for name in cfg.val_splits],
                          "data.val_splits")
    return DetectionData(train, val, list(train.class_names), "coco")


#: ``data.dataset`` -> builder(data config, training transforms, seed).
DATASETS = {"synthetic": _synthetic, "voc": _voc, "coco": _coco}


def build_data(cfg, inputs, seed: int = 0) -> DetectionData:
    """The datasets of ``cfg`` (a DataConfig) shaped by ``inputs`` (the model's input pipeline); a missing folder or
    file is a clear error naming it."""
    data = DATASETS[cfg.dataset](cfg, train_transforms(cfg, inputs), seed)
    if cfg.max_train_images is not None:
        data.train = Subset(data.train, range(min(cfg.max_train_images, len(data.train))))
    if cfg.val_on_train:
        data.val = untransformed(data.train)
    return data


def untransformed(train: Dataset) -> Dataset:
    """The training images without augmentation (a shallow copy whose ``transforms`` is None)."""
    base, indices = (train.dataset, train.indices) if isinstance(train, Subset) else (train, None)
    base = copy.copy(base)
    base.transforms = None
    return base if indices is None else Subset(base, indices)


def _existing(path, what: str) -> Path:
    if path is None:
        raise FileNotFoundError(f"{what}: not set")
    if not Path(path).exists():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    return Path(path)

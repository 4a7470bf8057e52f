"""Datasets of a :class:`detlab.config.DataConfig`: training set with augmentation, validation set without.

Validation images stay untransformed: the model letterboxes them itself and returns boxes in their pixels, so
predictions and targets meet in original image pixels, where the metric is defined.
"""

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset, Subset

from detlab.data import COCODetection, SyntheticShapes, VOCDetection
from detlab.data.transforms import (Compose, Letterbox, PhotometricDistort, RandomCrop, RandomHorizontalFlip,
                                    RandomScaleJitter)


@dataclass
class DetectionData:
    """train/val datasets, ``class_names`` (label order) and the ``metric`` their evaluation uses (voc | coco)."""

    train: Dataset
    val: Dataset
    class_names: list[str]
    metric: str


def train_transforms(cfg, image_size: int) -> Compose:
    """Letterbox to ``image_size``, then (as configured) zoom in by a factor in ``scale_jitter`` and crop back,
    flip, and distort colours."""
    steps = [Letterbox(image_size)]
    if cfg.scale_jitter is not None:
        low, high = cfg.scale_jitter
        steps += [RandomScaleJitter(low, high), RandomCrop((image_size, image_size))]
    if cfg.flip:
        steps.append(RandomHorizontalFlip())
    if cfg.photometric:
        steps.append(PhotometricDistort())
    return Compose(steps)


def build_data(cfg, image_size: int, seed: int = 0) -> DetectionData:
    """The datasets of ``cfg`` (a DataConfig); a missing folder or file is a clear error naming it."""
    augment = train_transforms(cfg, image_size)
    if cfg.dataset == "synthetic":
        shape = dict(height=cfg.synthetic_size, width=cfg.synthetic_size)
        train = SyntheticShapes(cfg.synthetic_train, seed=seed, transforms=augment, cache=True, **shape)
        val = SyntheticShapes(cfg.synthetic_val, seed=seed + 1, **shape)
        class_names, metric = list(SyntheticShapes.class_names), "voc"
    elif cfg.dataset == "voc":
        root = _existing(cfg.root, "data.root (the folder holding VOCdevkit)")
        # class names from the training annotations, so a VOC-layout dataset of other classes works as is
        train = VOCDetection(root, cfg.year, cfg.train_split, discover_classes=True, transforms=augment)
        class_names = list(train.class_names)
        val = VOCDetection(root, cfg.year, cfg.val_split, classes=class_names)
        metric = "voc"
    else:
        root = _existing(cfg.root, "data.root (the folder holding annotations/)")
        train = COCODetection(_existing(root / cfg.train_split, "data.train_split images"),
                              _existing(root / "annotations" / f"instances_{cfg.train_split}.json", "data.train_split"),
                              transforms=augment, keep_empty=False)
        val = COCODetection(_existing(root / cfg.val_split, "data.val_split images"),
                            _existing(root / "annotations" / f"instances_{cfg.val_split}.json", "data.val_split"),
                            include_crowd=True)
        class_names, metric = list(train.class_names), "coco"
    if cfg.max_train_images is not None:
        train = Subset(train, range(min(cfg.max_train_images, len(train))))
    if cfg.val_on_train:
        val = untransformed(train)
    return DetectionData(train, val, class_names, metric)


def untransformed(train: Dataset) -> Dataset:
    """The training images without augmentation (a shallow copy whose ``transforms`` is None)."""
    import copy

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

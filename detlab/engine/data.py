"""Datasets of a :class:`detlab.config.DataConfig`: training set with augmentation, validation set without.

The geometry comes from the model family's input pipeline (:mod:`detlab.data.inputs`): the training images start
with its resize, and scale-jitter crops back to its crop size. Validation images stay untransformed: the model
prepares them itself and returns boxes in their pixels, so predictions and targets meet in original image pixels,
where the metric is defined.
"""

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, Subset

from detlab.data import COCODetection, SyntheticShapes, VOCDetection
from detlab.data.images import check_images
from detlab.data.records import DataError, concat_datasets, leave_out_backgrounds
from detlab.data.stats import image_names, scan_summary
from detlab.data.voc import FlatVOCDetection, flat_voc_names
from detlab.data.yolo import YOLODataset
from detlab.data.transforms import Compose, PhotometricDistort, RandomCrop, RandomHorizontalFlip, RandomScaleJitter


@dataclass
class DetectionData:
    """train/val datasets, ``class_names`` (label order) and the ``metric`` their evaluation uses (voc | coco)."""

    train: Dataset
    val: Dataset
    class_names: list[str]
    metric: str

    def summary(self) -> str:
        """What was read, per split (images, backgrounds, boxes per class, fixes), as printed when training
        starts."""
        return "\n".join(scan_summary(dataset, name) for name, dataset in (("train", self.train), ("val", self.val)))

    def write_splits(self, folder: str | Path) -> list[Path]:
        """Write ``<folder>/splits/{train,val}.txt``: the images of each split, one per line (a flat_voc XML stem,
        which ``data.train_splits`` / ``data.val_splits`` read back, else the image path), so the evaluation set of a
        run is known."""
        out = Path(folder) / "splits"
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, dataset in (("train", self.train), ("val", self.val)):
            paths.append(out / f"{name}.txt")
            paths[-1].write_text("".join(f"{line}\n" for line in image_names(dataset)))
        return paths


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
    train_splits, val_splits = cfg.train_splits or ["trainval"], cfg.val_splits or ["test"]
    options = dict(ignore_classes=cfg.ignore_classes, strict=cfg.strict)
    # without data.classes: the names in the training annotations, so a VOC-layout dataset of any classes works
    train = VOCDetection(root, cfg.years, train_splits, classes=cfg.classes, discover_classes=cfg.classes is None,
                         transforms=augment, **options)
    class_names = list(train.class_names)
    val_years = cfg.years if cfg.val_years is None else cfg.val_years
    val = VOCDetection(root, val_years, val_splits, classes=class_names, **options)
    return DetectionData(train, val, class_names, "voc")


def _flat_voc(cfg, augment: Compose, seed: int) -> DetectionData:
    root = _existing(cfg.root, "data.root (the folder of VOC XMLs)")
    images = root if cfg.images is None else _existing(cfg.images, "data.images")
    train_names, val_names = _flat_split(cfg, root, seed)
    options = dict(ignore_classes=cfg.ignore_classes, strict=cfg.strict)
    train = FlatVOCDetection(root, images, train_names, classes=cfg.classes, transforms=augment, **options)
    val = FlatVOCDetection(root, images, val_names, classes=train.class_names, **options)
    return DetectionData(train, val, list(train.class_names), "voc")


def _flat_split(cfg, root: Path, seed: int) -> tuple[list[str], list[str]]:
    """(train, val) XML stems: from list files when ``data.train_splits`` is given (val: ``data.val_splits``,
    else the other XMLs), else a ``data.val_fraction`` share drawn with ``seed``."""
    every = flat_voc_names(root)
    if cfg.train_splits is None:
        if cfg.val_splits is not None:
            raise DataError("data.val_splits: for flat_voc give data.train_splits too (list files of both)")
        order = np.random.default_rng(seed).permutation(len(every))
        num_val = max(1, round(cfg.val_fraction * len(every)))
        if num_val >= len(every):
            raise DataError(f"data.val_fraction {cfg.val_fraction}: leaves no training image of {len(every)}")
        return [every[i] for i in sorted(order[num_val:])], [every[i] for i in sorted(order[:num_val])]
    known = set(every)
    train = [name for entry in cfg.train_splits for name in _listed_stems(entry, root, known, "data.train_splits")]
    if cfg.val_splits is None:
        taken = set(train)
        return train, [name for name in every if name not in taken]
    return train, [name for entry in cfg.val_splits for name in _listed_stems(entry, root, known, "data.val_splits")]


def _listed_stems(entry: str, root: Path, known: set, key: str) -> list[str]:
    """The XML stems a list file names (one per line: a stem, or a file name with its extension)."""
    path = Path(entry) if Path(entry).exists() else root / entry
    if not path.is_file():
        raise DataError(f"{key}: list file {entry} not found (looked in . and {root})")
    stems = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        stem = name if name in known else str(Path(name).with_suffix("").as_posix())
        if stem not in known:
            raise DataError(f"{path}:{number}: {name!r} has no XML in {root}")
        stems.append(stem)
    if not stems:
        raise DataError(f"{key}: list file {path} is empty")
    return stems


def _yolo(cfg, augment: Compose, seed: int) -> DetectionData:
    yaml_path = _existing(cfg.root, "data.root (the dataset YAML)")
    options = dict(ignore_classes=cfg.ignore_classes, strict=cfg.strict)
    train = YOLODataset(yaml_path, cfg.train_splits or ["train"], classes=cfg.classes, transforms=augment, **options)
    val = YOLODataset(yaml_path, cfg.val_splits or ["val"], classes=train.class_names, **options)
    return DetectionData(train, val, list(train.class_names), "voc")


def _coco(cfg, augment: Compose, seed: int) -> DetectionData:
    root = _existing(cfg.root, "data.root (the folder holding annotations/)")
    options = dict(ignore_classes=cfg.ignore_classes, strict=cfg.strict)

    def split(name: str, key: str, **kwargs) -> COCODetection:
        return COCODetection(_existing(root / name, f"{key} images"),
                             _existing(root / "annotations" / f"instances_{name}.json", key), **options, **kwargs)

    train = concat_datasets([split(name, "data.train_splits", transforms=augment, classes=cfg.classes)
                             for name in cfg.train_splits or ["train2017"]], "data.train_splits")
    # evaluation keeps every image, backgrounds included (their detections are false positives)
    val = concat_datasets([split(name, "data.val_splits", include_crowd=True, classes=train.class_names)
                           for name in cfg.val_splits or ["val2017"]], "data.val_splits")
    return DetectionData(train, val, list(train.class_names), "coco")


#: ``data.dataset`` -> builder(data config, training transforms, seed).
DATASETS = {"synthetic": _synthetic, "voc": _voc, "flat_voc": _flat_voc, "yolo": _yolo, "coco": _coco}


def build_data(cfg, inputs, seed: int = 0) -> DetectionData:
    """The datasets of ``cfg`` (a DataConfig) shaped by ``inputs`` (the model's input pipeline); a missing folder or
    file is a clear error naming it."""
    if cfg.images is not None and cfg.dataset != "flat_voc":
        raise DataError(f"data.images is for data.dataset: flat_voc (the images' folder), not {cfg.dataset} "
                        f"({'data.root locates the images' if cfg.dataset != 'synthetic' else 'no files'})")
    data = DATASETS[cfg.dataset](cfg, train_transforms(cfg, inputs), seed)
    if not cfg.keep_backgrounds and hasattr(data.train, "records"):  # the synthetic images all have objects
        leave_out_backgrounds(data.train, f"data.keep_backgrounds: false, {cfg.dataset} training set")
    if cfg.max_train_images is not None:
        data.train = Subset(data.train, range(min(cfg.max_train_images, len(data.train))))
    # every image header read now (every image decoded with skip_bad_images): a bad file stops (or, skipped, is
    # counted) before training, not in epoch 5
    data.train = check_images(data.train, cfg.skip_bad_images, f"{cfg.dataset} training images")
    if cfg.val_on_train:
        data.val = untransformed(data.train)
    else:
        data.val = check_images(data.val, cfg.skip_bad_images, f"{cfg.dataset} validation images")
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

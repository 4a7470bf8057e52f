"""Classification data: an ImageFolder tree, a local CIFAR-10 (python format), or synthetic shapes.

Every dataset yields ``(image, label)``: ``image`` is what its transform makes of a Tensor[3, H, W] uint8 RGB,
``label`` an int in ``0..len(classes)-1``. Bad input fails with the offending path in the message: a bad
folder layout when the dataset is built, an unreadable image when it is read.
"""

import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from detlab.data.errors import DataError
from detlab.data.synthetic import SHAPE_CLASSES, render_shapes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Shape diameter as a fraction of the image side: object-centric, like a classification photo (the detection
# default goes down to 0.15, too few pixels to tell a star from an ellipse at classification resolutions).
SYNTHETIC_SHAPE_SIZE = (0.35, 0.9)


def build_transform(config, mean, std, train: bool) -> v2.Compose:
    """uint8 Tensor[3, H, W] -> float Tensor[3, image_size, image_size] normalised with the backbone's mean/std."""
    ops = [v2.Resize((config.image_size, config.image_size), antialias=True)]
    if train and config.augment:
        ops += [
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=config.rotation, scale=(1 - config.zoom, 1 + config.zoom)),
            v2.ColorJitter(brightness=config.color, contrast=config.color, saturation=config.color),
        ]
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(ops)


def _synthetic(config, train_tf, val_tf) -> tuple[Dataset, Dataset]:
    # separate seed streams, so train and val never share an image
    return (synthetic_shapes(config.synthetic_train, config.image_size, (config.seed, 0), train_tf),
            synthetic_shapes(config.synthetic_val, config.image_size, (config.seed, 1), val_tf))


def _folder(config, train_tf, val_tf) -> tuple[Dataset, Dataset]:
    root = Path(config.data_dir)
    train = ImageFolder(root / "train", train_tf)
    return train, ImageFolder(root / "val", val_tf, classes=train.classes)


def _cifar10(config, train_tf, val_tf) -> tuple[Dataset, Dataset]:
    return (load_cifar10(config.data_dir, train=True, transform=train_tf),
            load_cifar10(config.data_dir, train=False, transform=val_tf))


#: ``dataset`` -> builder(config, train transform, val transform) -> (train set, val set).
DATASETS = {"synthetic": _synthetic, "folder": _folder, "cifar10": _cifar10}


def build_datasets(config, mean, std) -> tuple[Dataset, Dataset, list[str]]:
    """``(train set, val set, class names)`` for ``config.dataset`` (a ClassifyConfig), normalised with
    ``mean``/``std``."""
    train, val = DATASETS[config.dataset](config, build_transform(config, mean, std, train=True),
                                          build_transform(config, mean, std, train=False))
    return train, val, list(train.classes)


class ImageFolder(Dataset):
    """``root/<class>/<image>``, classes in sorted folder order (like Keras' ``image_dataset_from_directory``).

    Args:
        classes: the training classes, for a validation folder: its folders must be among them (a class absent
            here is fine), and labels follow their order.

    Raises ValueError (naming the path) for an empty class folder, a non-image file, or a class unknown to
    ``classes``. Hidden files (``.DS_Store``) are ignored.
    """

    def __init__(self, root: str | Path, transform=None, classes: list[str] | None = None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: image folder not found (expected {root}/<class>/<image>)")
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not found:
            raise DataError(f"{root}: no class folders (expected {root}/<class>/<image>)")
        unknown = [name for name in found if classes is not None and name not in classes]
        if unknown:
            raise DataError(f"{root / unknown[0]}: class {unknown[0]!r} is not among the training classes "
                             f"({', '.join(classes)})")
        self.classes = list(classes) if classes is not None else found
        self.transform = transform
        self.samples = []  # (path, label)
        for name in found:
            files = sorted(p for p in (root / name).iterdir() if not p.name.startswith("."))
            if not files:
                raise DataError(f"{root / name}: empty class folder")
            for path in files:
                if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
                    raise DataError(f"{path}: not an image file (expected {', '.join(IMAGE_EXTENSIONS)})")
                self.samples.append((path, self.classes.index(name)))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                array = np.array(image.convert("RGB"))  # a writable copy, as torch.from_numpy wants
        except Exception as error:  # PIL raises several types for unreadable files
            raise DataError(f"{path}: cannot read image ({error})") from error
        image = torch.from_numpy(array).permute(2, 0, 1)
        return (self.transform(image) if self.transform else image), label


class InMemoryImages(Dataset):
    """images (Tensor[N, 3, H, W] uint8) and their labels, held in memory."""

    def __init__(self, images: torch.Tensor, labels: list[int], classes: list[str], transform=None):
        self.images = images
        self.labels = labels
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]
        return (self.transform(image) if self.transform else image), self.labels[index]


def load_cifar10(root: str | Path, train: bool, transform=None) -> InMemoryImages:
    """CIFAR-10 in its python format: ``data_batch_1..5`` (train) or ``test_batch`` (val), and ``batches.meta``.

    ``root`` is the ``cifar-10-batches-py`` folder or its parent. The batches are pickles, as published: only
    load a folder you trust.
    """
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images, labels = [], []
    for name in names:
        batch = _unpickle(root / name)
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels += [int(label) for label in batch[b"labels"]]
    classes = [name.decode() for name in _unpickle(root / "batches.meta")[b"label_names"]]
    return InMemoryImages(torch.from_numpy(np.concatenate(images)), labels, classes, transform)


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (a CIFAR-10 python-format folder has data_batch_1..5, "
                                f"test_batch and batches.meta)")
    with open(path, "rb") as file:
        return pickle.load(file, encoding="bytes")


def synthetic_shapes(size: int, image_size: int, seed, transform=None) -> InMemoryImages:
    """``size`` images with one shape each from :func:`detlab.data.synthetic.render_shapes`; the label is the
    shape's class. Rendered once, in memory, from ``seed``: no files, and the same set on every run."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(size):
        image, _, shape_labels = render_shapes(rng, image_size, image_size, min_shapes=1, max_shapes=1,
                                               min_size=SYNTHETIC_SHAPE_SIZE[0], max_size=SYNTHETIC_SHAPE_SIZE[1])
        images.append(image)
        labels.append(int(shape_labels[0]))
    images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # [N, 3, H, W] uint8
    return InMemoryImages(images, labels, SHAPE_CLASSES, transform)

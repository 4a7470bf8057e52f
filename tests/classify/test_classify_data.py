"""Classification data: ImageFolder trees (and their errors), CIFAR-10 python format, synthetic shapes."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from detlab.classify.config import ClassifyConfig
from detlab.classify.data import ImageFolder, build_datasets, build_transform, load_cifar10, synthetic_shapes
from detlab.data.synthetic import SHAPE_CLASSES

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_images(folder, count, colour=(200, 30, 30), size=(20, 14)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size, colour).save(folder / f"{i}.jpg")


def test_image_folder_sorted_classes_and_labels(tmp_path):
    write_images(tmp_path / "train" / "dog", 2)
    write_images(tmp_path / "train" / "cat", 3)
    (tmp_path / "train" / "cat" / ".DS_Store").write_text("ignored")
    train = ImageFolder(tmp_path / "train")
    assert train.classes == ["cat", "dog"]
    assert [label for _, label in train.samples] == [0, 0, 0, 1, 1]
    image, label = train[0]
    assert image.shape == (3, 14, 20) and image.dtype == torch.uint8 and label == 0
    # a validation folder follows the training classes, even with one of them absent
    write_images(tmp_path / "val" / "dog", 1)
    val = ImageFolder(tmp_path / "val", classes=train.classes)
    assert val.classes == ["cat", "dog"] and val.samples[0][1] == 1


def test_empty_class_folder_names_the_path(tmp_path):
    write_images(tmp_path / "train" / "cat", 1)
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(ValueError, match=f"{tmp_path / 'train' / 'dog'}: empty class folder"):
        ImageFolder(tmp_path / "train")


def test_non_image_file_names_the_path(tmp_path):
    write_images(tmp_path / "train" / "cat", 1)
    (tmp_path / "train" / "cat" / "labels.csv").write_text("a,b")
    with pytest.raises(ValueError, match="labels.csv: not an image file"):
        ImageFolder(tmp_path / "train")


def test_unreadable_image_names_the_path(tmp_path):
    write_images(tmp_path / "train" / "cat", 1)
    (tmp_path / "train" / "cat" / "broken.jpg").write_text("not a jpeg")
    dataset = ImageFolder(tmp_path / "train")
    with pytest.raises(ValueError, match="broken.jpg: cannot read image"):
        dataset[1]


def test_class_in_val_but_not_in_train_names_the_path(tmp_path):
    write_images(tmp_path / "train" / "cat", 1)
    write_images(tmp_path / "val" / "cat", 1)
    write_images(tmp_path / "val" / "fox", 1)
    config = ClassifyConfig(dataset="folder", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=f"{tmp_path / 'val' / 'fox'}: class 'fox' is not among the training"):
        build_datasets(config, MEAN, STD)


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train")):
        build_datasets(ClassifyConfig(dataset="folder", data_dir=str(tmp_path)), MEAN, STD)


def test_cifar10_python_format(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, size=(2, 3072), dtype=np.uint8), b"labels": [3, 7]}
        (root / name).write_bytes(pickle.dumps(batch))
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                  "truck")]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    train = load_cifar10(tmp_path, train=True)  # the parent folder works too
    val = load_cifar10(root, train=False)
    assert len(train) == 10 and len(val) == 2 and train.classes[3] == "cat"
    image, label = val[1]
    assert image.shape == (3, 32, 32) and label == 7
    (root / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_cifar10(root, train=False)


def test_synthetic_shapes_are_seeded_and_labelled():
    first, again, other = (synthetic_shapes(12, 32, seed) for seed in ((0, 0), (0, 0), (0, 1)))
    assert torch.equal(first.images, again.images) and first.labels == again.labels
    assert not torch.equal(first.images, other.images)
    assert first.images.shape == (12, 3, 32, 32) and first.classes == list(SHAPE_CLASSES)
    assert set(first.labels) <= set(range(len(SHAPE_CLASSES)))


@pytest.mark.parametrize("augment", [False, True])
def test_transform_resizes_and_normalises(augment):
    config = ClassifyConfig(image_size=24, augment=augment)
    image = torch.full((3, 40, 30), 255, dtype=torch.uint8)
    out = build_transform(config, MEAN, STD, train=True)(image)
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    if not augment:
        torch.testing.assert_close(out[:, 0, 0], (1 - torch.tensor(MEAN)) / torch.tensor(STD))

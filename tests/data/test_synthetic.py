import numpy as np
import pytest
import torch

from detlab.data import COCODetection, SHAPE_CLASSES, SyntheticShapes, VOCDetection, make_loader, render_shapes


def test_render_shapes_types_counts_and_boxes_inside():
    for seed in range(10):
        image, boxes, labels = render_shapes(np.random.default_rng(seed), 96, 128, min_shapes=2, max_shapes=4)
        assert image.shape == (96, 128, 3) and image.dtype == np.uint8
        assert boxes.dtype == np.float32 and labels.dtype == np.int64
        assert 2 <= len(boxes) == len(labels) <= 4 and set(labels.tolist()) <= set(range(len(SHAPE_CLASSES)))
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 96).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()


def test_render_shapes_single_shape_box_bounds_exactly_its_colour():
    for seed in range(20):
        image, boxes, labels = render_shapes(np.random.default_rng(seed), 64, 64, min_shapes=1, max_shapes=1)
        x1, y1, x2, y2 = boxes[0].astype(int)
        assert np.array_equal(boxes[0], boxes[0].round())  # pixel-edge coordinates
        # the shape is flat-coloured: the pixels of its colour are exactly inside its box and touch all 4 sides
        colour = _shape_colour(image, boxes[0])
        ys, xs = np.nonzero((image == colour).all(axis=-1))
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2), seed


def _shape_colour(image, box):
    """The most frequent colour inside the box (the shape's flat colour; the background is noisy)."""
    x1, y1, x2, y2 = box.astype(int)
    colours, counts = np.unique(image[y1:y2, x1:x2].reshape(-1, 3), axis=0, return_counts=True)
    return colours[counts.argmax()]


def test_render_shapes_is_seeded():
    a = render_shapes(np.random.default_rng(7), 50, 70)
    b = render_shapes(np.random.default_rng(7), 50, 70)
    c = render_shapes(np.random.default_rng(8), 50, 70)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_synthetic_dataset_is_deterministic_per_seed_and_index():
    dataset = SyntheticShapes(8, 64, 80, seed=1)
    image, target = dataset[5]
    assert image.shape == (3, 64, 80) and image.dtype == torch.uint8 and target["image_id"] == 5
    again_image, again_target = SyntheticShapes(8, 64, 80, seed=1)[5]  # a fresh object, random access
    assert torch.equal(image, again_image) and torch.equal(target["boxes"], again_target["boxes"])
    assert not torch.equal(SyntheticShapes(8, 64, 80, seed=2)[5][0], image)
    with pytest.raises(IndexError):
        dataset[8]


@pytest.mark.slow
def test_synthetic_dataset_is_the_same_in_dataloader_workers():
    dataset = SyntheticShapes(6, 48, 48, seed=3)
    images, targets = [], []
    for batch_images, batch_targets in make_loader(dataset, batch_size=2, num_workers=2, pin_memory=False):
        images += batch_images
        targets += batch_targets
    for i in range(len(dataset)):
        assert torch.equal(images[i], dataset[i][0]) and torch.equal(targets[i]["boxes"], dataset[i][1]["boxes"])


def test_synthetic_written_as_voc_and_coco_reloads_identical_boxes(tmp_path):
    dataset = SyntheticShapes(6, 64, 96, seed=4)
    dataset.write_voc(tmp_path / "voc", year="2012", split="train")
    dataset.write_coco(tmp_path / "coco/instances.json", tmp_path / "coco/images")
    voc = VOCDetection(tmp_path / "voc", years="2012", splits="train", classes=SHAPE_CLASSES)
    coco = COCODetection(tmp_path / "coco/images", tmp_path / "coco/instances.json")
    assert coco.class_names == SHAPE_CLASSES and len(voc) == len(coco) == 6
    for i in range(6):
        expected = dataset.target(i)
        for reloaded in (voc.target(i), coco.target(i)):
            assert torch.equal(reloaded["boxes"], expected["boxes"])
            assert torch.equal(reloaded["labels"], expected["labels"])
        assert torch.equal(coco[i][0], dataset[i][0])  # PNG: lossless
        assert (voc[i][0].float() - dataset[i][0].float()).abs().mean() < 8  # JPEG: close

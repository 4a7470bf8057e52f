import numpy as np
import pytest
import torch
from PIL import Image

from detlab.boxes import box_iou
from detlab.classify.data import ImageFolder
from detlab.data import DataError, SyntheticShapes
from detlab.data.crops import BACKGROUND, MAX_BACKGROUND_IOU, NEAR_MISS_IOU, _free_patch, _near_miss, export_crops


def test_every_object_becomes_one_crop_of_its_grown_box(tmp_path):
    dataset = SyntheticShapes(6, height=96, width=96, seed=3)
    counts = export_crops(dataset, tmp_path, context=0.25, backgrounds_per_image=0)
    objects = [dataset.target(i) for i in range(len(dataset))]
    expected = {}
    for target in objects:
        for label in target["labels"].tolist():
            expected[SyntheticShapes.class_names[label]] = expected.get(SyntheticShapes.class_names[label], 0) + 1
    assert {k: v for k, v in counts.items() if not k.startswith(("skipped", "background"))} == expected
    # image 2's first object: the box grown by a quarter of its size per side, clipped to the image
    box = objects[2]["boxes"][0].double()
    size = box[2:] - box[:2]
    grown = torch.cat([(box[:2] - 0.25 * size).floor().clamp(min=0), (box[2:] + 0.25 * size).ceil().clamp(max=96)])
    name = SyntheticShapes.class_names[int(objects[2]["labels"][0])]
    crop = np.asarray(Image.open(tmp_path / name / "000002_0.png"))
    x1, y1, x2, y2 = grown.int().tolist()
    assert crop.shape == (y2 - y1, x2 - x1, 3)
    np.testing.assert_array_equal(crop, dataset[2][0].permute(1, 2, 0).numpy()[y1:y2, x1:x2])


def test_background_patches_overlap_no_object():
    rng = np.random.default_rng(0)
    boxes = np.array([[10.0, 10, 50, 40], [60, 70, 100, 120]])
    patches = [_free_patch(rng, boxes, 30.0, 128, 128) for _ in range(200)]
    assert all(p is not None for p in patches)
    patches = torch.tensor(np.stack(patches))
    assert (box_iou(patches, torch.from_numpy(boxes)) <= MAX_BACKGROUND_IOU).all()
    assert torch.allclose(patches[:, 2:] - patches[:, :2], torch.tensor(30.0, dtype=torch.float64))
    assert (patches >= 0).all() and (patches <= 128).all()
    # an object covering the whole image leaves no room: None, counted by export_crops
    assert _free_patch(rng, np.array([[0.0, 0, 128, 128]]), 100.0, 128, 128) is None


def test_near_misses_overlap_their_object_only_partly(tmp_path):
    rng = np.random.default_rng(0)
    boxes = np.array([[20.0, 20, 60, 50], [80, 80, 110, 120]])
    for box in boxes:
        for _ in range(50):
            shifted = _near_miss(rng, box, boxes, 128, 128)
            assert shifted is not None and np.allclose(shifted[2:] - shifted[:2], box[2:] - box[:2])
            best = box_iou(torch.from_numpy(shifted)[None], torch.from_numpy(boxes)).max()
            assert NEAR_MISS_IOU[0] <= best < NEAR_MISS_IOU[1]
    dataset = SyntheticShapes(4, height=128, width=128, seed=2)
    counts = export_crops(dataset, tmp_path, backgrounds_per_image=0, near_misses_per_object=2)
    objects = sum(len(dataset.target(i)["boxes"]) for i in range(4))
    assert counts[BACKGROUND] + counts["background_not_found"] == 2 * objects
    assert len(list((tmp_path / BACKGROUND).glob("*_near*.png"))) == counts[BACKGROUND] > 0


def test_exported_folder_is_an_image_folder_with_a_background_class(tmp_path):
    dataset = SyntheticShapes(8, height=128, width=128, seed=0, max_shapes=2, max_size=0.3)
    counts = export_crops(dataset, tmp_path, backgrounds_per_image=3, seed=1)
    assert counts[BACKGROUND] + counts["background_not_found"] == 24 and counts[BACKGROUND] > 0
    folder = ImageFolder(tmp_path)
    written = {k: v for k, v in counts.items() if not k.startswith(("skipped", "background_not"))}
    assert folder.classes == sorted(written) and len(folder) == sum(written.values())


def test_bad_uses_are_refused_with_the_reason(tmp_path):
    dataset = SyntheticShapes(2, height=64, width=64)
    export_crops(dataset, tmp_path / "out")
    with pytest.raises(FileExistsError, match="already holds crops"):
        export_crops(dataset, tmp_path / "out")
    augmented = SyntheticShapes(2, height=64, width=64, transforms=lambda image, target: (image, target))
    with pytest.raises(ValueError, match="without transforms"):
        export_crops(augmented, tmp_path / "other")
    with pytest.raises(DataError, match="no crop written"):
        export_crops(dataset, tmp_path / "small", min_size=1000, backgrounds_per_image=0)

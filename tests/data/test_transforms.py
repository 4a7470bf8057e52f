import pytest
import torch

from detlab.data.transforms import (Compose, Letterbox, Normalize, PhotometricDistort, RandomCrop,
                                    RandomHorizontalFlip, RandomRotation, RandomScaleJitter, Resize, ToFloat,
                                    horizontal_flip, to_original_boxes)


def _rectangle_sample(height=90, width=140, box=(30, 20, 100, 50)):
    """A black image with one red filled rectangle and its exact box."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    image[0, y1:y2, x1:x2] = 255
    target = {"boxes": torch.tensor([box], dtype=torch.float32), "labels": torch.tensor([2]),
              "difficult": torch.tensor([False]), "iscrowd": torch.tensor([False]),
              "area": torch.tensor([float((x2 - x1) * (y2 - y1))]), "orig_size": torch.tensor([height, width]),
              "image_id": 0}
    return image, target


def _red_extent(image):
    """(x1, y1, x2, y2) bounding the clearly red pixels (pixel-edge coordinates)."""
    red = image.float()
    if image.dtype == torch.uint8:
        red = red / 255
    mask = (red[0] > 0.5) & (red[1] < 0.3)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


@pytest.mark.parametrize("transform, tolerance", [
    (Resize(min_size=45, max_size=1000), 1.0),
    (Resize(min_size=200, max_size=250), 1.0),  # the max-size cap decides
    (Letterbox(128), 1.0),
    (RandomHorizontalFlip(p=1.0), 0.0),
    (Compose([RandomScaleJitter(1.3, 1.3), RandomCrop((100, 100), min_visible=0.1)]), 1.0),
    (Compose([ToFloat(), RandomScaleJitter(0.7, 0.7), RandomHorizontalFlip(1.0)]), 1.0),
])  # fmt: skip
def test_geometric_transforms_keep_boxes_on_the_pixels(transform, tolerance):
    torch.manual_seed(0)
    image, target = transform(*_rectangle_sample())
    assert len(target["boxes"]) == 1
    assert torch.allclose(target["boxes"][0], _red_extent(image), atol=tolerance)


def test_rotation_box_bounds_the_rotated_pixels():
    for seed in range(5):
        torch.manual_seed(seed)
        image, target = RandomRotation(degrees=30, fill=0, min_visible=0.0)(*_rectangle_sample())
        box, extent = target["boxes"][0], _red_extent(image)
        assert (box[:2] <= extent[:2] + 1).all() and (box[2:] >= extent[2:] - 1).all()  # bounds the pixels
        assert (box[2:] - box[:2] <= (extent[2:] - extent[:2]) + 2).all()  # and is tight for a rectangle
    with pytest.raises(ValueError, match="RandomRotation"):
        to_original_boxes(target["boxes"], target)


def test_flip_twice_is_identity():
    image, target = _rectangle_sample()
    target["boxes"] = torch.tensor([[0.0, 0.0, 3.5, 7.0], [30.0, 20.0, 100.0, 50.0], [139.0, 1.0, 140.0, 90.0]])
    once_image, once = horizontal_flip(image, target)
    twice_image, twice = horizontal_flip(once_image, once)
    assert not torch.equal(once_image, image)
    assert torch.equal(twice_image, image) and torch.equal(twice["boxes"], target["boxes"])
    assert once["boxes"][0].tolist() == [136.5, 0.0, 140.0, 7.0]
    assert torch.equal(to_original_boxes(twice["boxes"], twice), target["boxes"])


@pytest.mark.parametrize("height, width", [(90, 140), (140, 90), (64, 64)])
def test_letterbox_records_scale_and_padding_and_maps_boxes_back(height, width):
    image, target = _rectangle_sample(height, width, box=(10, 12, 60, 50))
    out_image, out = Letterbox(160, fill=114)(image, target)
    assert out_image.shape == (3, 160, 160)
    scale, pad = out["scale"], out["offset"]
    assert torch.allclose(scale, torch.full((2,), 160 / max(height, width)), atol=0.01)
    assert pad.tolist() == [(160 - round(width * scale[0].item())) // 2, (160 - round(height * scale[1].item())) // 2]
    assert (out_image[:, : int(pad[1]), :] == 114).all() and (out_image[:, :, : int(pad[0])] == 114).all()
    # a prediction on the letterboxed image maps back to the original pixels
    assert torch.allclose(to_original_boxes(out["boxes"], out), target["boxes"], atol=1e-4)


def test_chained_geometry_maps_back_to_the_original():
    torch.manual_seed(3)
    transform = Compose([RandomHorizontalFlip(1.0), RandomScaleJitter(0.6, 1.4), Resize(64, 100), Letterbox(96)])
    image, target = _rectangle_sample()
    _, out = transform(image, target)
    assert torch.allclose(to_original_boxes(out["boxes"], out), target["boxes"], atol=1e-3)


def test_random_crop_clips_and_applies_min_visible_area():
    image, target = _rectangle_sample(100, 100, box=(0, 0, 10, 10))
    target = {**target, "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 60.0, 60.0]]),
              "labels": torch.tensor([0, 1]), "difficult": torch.tensor([False, True]),
              "iscrowd": torch.tensor([False, False]), "area": torch.tensor([100.0, 400.0])}
    generator = torch.Generator().manual_seed(0)
    crop = RandomCrop((100, 50), min_visible=0.5, generator=generator)
    for _ in range(20):
        _, out = crop(torch.zeros(3, 100, 100), target)
        left = -int(out["offset"][0])
        # the 40..60 box is cut in half when the window starts or ends at 50; 50% visible is kept
        visible = (min(60, left + 50) - max(40, left)) / 20
        assert (1 in out["labels"].tolist()) == (visible >= 0.5)
        for box, label, area, difficult in zip(out["boxes"], out["labels"], out["area"], out["difficult"]):
            assert 0 <= box[0] < box[2] <= 50 and difficult.item() == (label.item() == 1)  # fields stay aligned
            assert area.item() == pytest.approx(((box[2] - box[0]) * (box[3] - box[1])).item())


def test_transforms_are_seeded():
    transform = Compose([RandomHorizontalFlip(), RandomScaleJitter(), RandomCrop((70, 70)), PhotometricDistort(p=0.9),
                         RandomRotation(15)])
    image, target = _rectangle_sample()
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append([transform(image, target) for _ in range(4)])
    for (image_a, target_a), (image_b, target_b) in zip(*runs):
        assert torch.equal(image_a, image_b) and torch.equal(target_a["boxes"], target_b["boxes"])
    assert len({tuple(t["boxes"].flatten().tolist()) for _, t in runs[0]}) > 1  # it is random, though
    # a private generator gives the same draws whatever the global RNG does
    outputs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        private = RandomScaleJitter(generator=torch.Generator().manual_seed(5))
        outputs.append(private(image, target)[0])
    assert torch.equal(*outputs)


def test_photometric_distort_changes_pixels_not_boxes_and_normalize_uses_given_stats():
    image, target = _rectangle_sample()
    image = image + 40  # no pure black, so brightness/contrast show
    out_image, out = PhotometricDistort(0.5, 0.5, 0.5, 0.1, p=1.0, generator=torch.Generator().manual_seed(0))(
        image, target)
    assert out_image.dtype == torch.uint8 and not torch.equal(out_image, image)
    assert torch.equal(out["boxes"], target["boxes"])
    normalized, _ = Normalize(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))(image, target)
    expected = (image.float() / 255 - torch.tensor([0.5, 0.25, 0.0])[:, None, None]) / torch.tensor(
        [0.5, 0.25, 2.0])[:, None, None]
    assert normalized.dtype == torch.float32 and torch.allclose(normalized, expected, atol=1e-6)


# ---- ignore regions (target["ignore_boxes"]) move with the pixels


def _with_regions(regions, height=90, width=140):
    image, target = _rectangle_sample(height, width)
    return image, {**target, "ignore_boxes": torch.tensor(regions, dtype=torch.float32).reshape(-1, 4)}


def test_flip_resize_and_letterbox_move_ignore_regions_exactly():
    image, target = _with_regions([[10, 5, 40, 25], [0, 0, 140, 90]])
    # a flip maps x to 140 - x and swaps the edges
    _, out = horizontal_flip(image, target)
    assert out["ignore_boxes"].tolist() == [[100, 5, 130, 25], [0, 0, 140, 90]]
    # short side 90 -> 45: every coordinate halves
    _, out = Resize(min_size=45, max_size=1000)(image, target)
    assert out["ignore_boxes"].tolist() == [[5, 2.5, 20, 12.5], [0, 0, 70, 45]]
    # letterbox 160: x * 160/140; the image becomes 160 x round(90 * 160/140) = 103, placed 28 rows down
    _, out = Letterbox(160)(image, target)
    sy = 103 / 90
    expected = torch.tensor([[10 * 8 / 7, 5 * sy + 28, 40 * 8 / 7, 25 * sy + 28], [0, 28, 160, 131]])
    torch.testing.assert_close(out["ignore_boxes"], expected)
    # and it maps back like a box does
    torch.testing.assert_close(to_original_boxes(out["ignore_boxes"], out), target["ignore_boxes"])


def test_crop_clips_ignore_regions_without_min_visible_and_drops_empty_ones():
    regions = [[0, 0, 10, 10], [20, 30, 90, 80], [95, 0, 100, 100]]
    _, target = _with_regions(regions, 100, 100)
    crop = RandomCrop((100, 50), min_visible=0.9, generator=torch.Generator().manual_seed(0))
    lefts = set()
    for _ in range(30):
        _, out = crop(torch.zeros(3, 100, 100), target)
        left = -int(out["offset"][0])
        lefts.add(left)
        expected = []
        for x1, y1, x2, y2 in regions:  # shifted by the window, clipped to its 50 columns, empty ones gone
            x1, x2 = min(max(x1 - left, 0), 50), min(max(x2 - left, 0), 50)
            if x2 > x1:
                expected.append([x1, y1, x2, y2])
        assert out["ignore_boxes"].tolist() == expected
    assert min(lefts) < 10 and max(lefts) > 45  # windows that keep and that lose the first and last regions


def test_rotation_moves_an_ignore_region_as_it_moves_a_box():
    image, target = _with_regions([[30, 20, 100, 50], [120, 0, 140, 90]])
    for seed in range(3):
        torch.manual_seed(seed)
        _, out = RandomRotation(degrees=30, fill=0, min_visible=0.0)(image, target)
        # the first region is the object's box: it lands where the box lands
        torch.testing.assert_close(out["ignore_boxes"][0], out["boxes"][0])
        assert (out["ignore_boxes"] >= 0).all() and (out["ignore_boxes"][:, 0::2] <= 140).all()  # clipped


def test_transforms_keep_targets_without_ignore_regions_and_empty_ones():
    transform = Compose([RandomHorizontalFlip(1.0), RandomScaleJitter(0.8, 1.2), RandomCrop((60, 60)),
                         RandomRotation(10), Letterbox(64)])
    torch.manual_seed(0)
    _, out = transform(*_rectangle_sample())
    assert "ignore_boxes" not in out
    torch.manual_seed(0)
    _, out = transform(*_with_regions([]))
    assert out["ignore_boxes"].shape == (0, 4)

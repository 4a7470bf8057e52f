"""Object crops of a detection dataset as an image-classification folder, for pretraining a backbone.

    export_crops(VOCDetection("voc-cells", splits="train", discover_classes=True), "crops/train")

writes ``crops/train/<class>/<image_id>_<k>.png`` for every object, plus ``crops/train/background/`` patches that
overlap no object, the layout :class:`detlab.classify.data.ImageFolder` (``tools/train_cls.py --dataset folder``)
reads. A classifier trained on them learns what the objects of this domain look like, and its backbone can then
start a detector (``model.weights=<its best.pt>``) where no ImageNet weights are at hand. Export only the
detector's training images: crops of its validation or test images would leak them into the backbone.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detlab.boxes import box_iou
from detlab.data.records import DataError, DetectionDataset

BACKGROUND = "background"
# a background patch may overlap an object by at most this IoU (so it is not a crop of that object)
MAX_BACKGROUND_IOU = 0.1
MAX_BACKGROUND_ATTEMPTS = 50
# a near miss overlaps its object by an IoU in this range: Fast R-CNN's "background" band, the hard negatives
NEAR_MISS_IOU = (0.1, 0.4)


def export_crops(dataset: DetectionDataset, out_dir, context: float = 0.2, backgrounds_per_image: int = 2,
                 near_misses_per_object: int = 0, min_size: float = 4.0, skip_difficult: bool = True,
                 seed: int = 0) -> dict[str, int]:
    """Write the crops of every object of ``dataset`` (and background patches) under ``out_dir``.

    Args:
        dataset: a detection dataset without transforms (VOCDetection, COCODetection, SyntheticShapes).
        out_dir: the folder to write ``<class>/*.png`` into; created if missing, must hold no ``.png`` yet.
        context: the crop is the box grown by this fraction of its size on each side (clipped to the image).
        backgrounds_per_image: square patches per image, sized like the image's objects (or a quarter of the
            image when it has none), whose IoU with every object is at most ``MAX_BACKGROUND_IOU``. 0: none.
        near_misses_per_object: background crops of each object's box shifted until its best IoU with any object
            is within ``NEAR_MISS_IOU`` (part of an object, not centred on one): a classifier that must tell them
            from the object crops learns where an object is, not only that one is near.
        min_size: objects narrower or lower than this (pixels) are skipped and counted.
        skip_difficult: leave out VOC ``difficult`` objects (and crowd regions, which are no single object).

    Returns:
        the number of crops written per class folder, plus ``"skipped_small"``, ``"skipped_difficult"`` and
        ``"background_not_found"`` (patches not found after ``MAX_BACKGROUND_ATTEMPTS``, free or near miss).
    """
    out_dir = Path(out_dir)
    if getattr(dataset, "transforms", None) is not None:
        raise ValueError("dataset: export crops from a dataset without transforms (its boxes must be the file's)")
    if out_dir.exists() and any(out_dir.rglob("*.png")):
        raise FileExistsError(f"{out_dir}: already holds crops; choose an empty or new folder")
    if BACKGROUND in dataset.class_names and backgrounds_per_image > 0:
        raise ValueError(f"dataset: has a class named {BACKGROUND!r}; pass backgrounds_per_image=0")
    rng = np.random.default_rng(seed)
    counts = {"skipped_small": 0, "skipped_difficult": 0, "background_not_found": 0}
    for index in range(len(dataset)):
        image, target = dataset[index]
        pixels = image.permute(1, 2, 0).numpy()  # [H, W, 3] uint8
        height, width = pixels.shape[:2]
        boxes = target["boxes"].double().numpy()
        flagged = (target["difficult"] | target["iscrowd"]).numpy() if skip_difficult else np.zeros(len(boxes), bool)
        sizes = boxes[:, 2:] - boxes[:, :2]
        for k, (box, label) in enumerate(zip(boxes, target["labels"].tolist())):
            if flagged[k]:
                counts["skipped_difficult"] += 1
                continue
            if sizes[k].min() < min_size:
                counts["skipped_small"] += 1
                continue
            name = dataset.class_names[label]
            _save(pixels, _grow(box, context), out_dir / name / f"{target['image_id']:06d}_{k}.png")
            counts[name] = counts.get(name, 0) + 1
            for j in range(near_misses_per_object):
                shifted = _near_miss(rng, box, boxes, height, width)
                near_path = out_dir / BACKGROUND / f"{target['image_id']:06d}_{k}_near{j}.png"
                _save_background(pixels, None if shifted is None else _grow(shifted, context), near_path, counts)
        for k in range(backgrounds_per_image):
            side = float(np.sqrt(sizes.prod(1)).mean() * (1 + 2 * context)) if len(boxes) else min(height, width) / 4
            patch = _free_patch(rng, boxes, min(side, height, width), height, width)
            _save_background(pixels, patch, out_dir / BACKGROUND / f"{target['image_id']:06d}_{k}.png", counts)
    if not any(v for k, v in counts.items() if not k.startswith(("skipped", "background_not"))):
        raise DataError(f"{out_dir}: no crop written (every object smaller than min_size={min_size} or flagged)")
    return counts


def _grow(box: np.ndarray, context: float) -> np.ndarray:
    """xyxy ``box`` grown by ``context`` times its size on each side."""
    margin = context * (box[2:] - box[:2])
    return np.concatenate([box[:2] - margin, box[2:] + margin])


def _save_background(pixels: np.ndarray, box: np.ndarray | None, path: Path, counts: dict) -> None:
    """Save a background patch, or count it as not found (``box`` None)."""
    if box is None:
        counts["background_not_found"] += 1
        return
    _save(pixels, box, path)
    counts[BACKGROUND] = counts.get(BACKGROUND, 0) + 1


def _save(pixels: np.ndarray, box: np.ndarray, path: Path) -> None:
    height, width = pixels.shape[:2]
    x1, y1 = int(max(np.floor(box[0]), 0)), int(max(np.floor(box[1]), 0))
    x2, y2 = int(min(np.ceil(box[2]), width)), int(min(np.ceil(box[3]), height))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels[y1:y2, x1:x2])).save(path)


def _free_patch(rng, boxes: np.ndarray, side: float, height: int, width: int) -> np.ndarray | None:
    """A random ``side x side`` xyxy box inside the image overlapping no box by more than MAX_BACKGROUND_IOU."""
    for _ in range(MAX_BACKGROUND_ATTEMPTS):
        x1, y1 = rng.uniform(0, width - side), rng.uniform(0, height - side)
        patch = np.array([x1, y1, x1 + side, y1 + side])
        overlap = box_iou(torch.from_numpy(patch)[None], torch.from_numpy(boxes)) if len(boxes) else torch.zeros(1)
        if overlap.max() <= MAX_BACKGROUND_IOU:
            return patch
    return None


def _near_miss(rng, box: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray | None:
    """``box`` (float64[4]) shifted by up to its size, inside the image, with its best IoU with ``boxes`` within
    NEAR_MISS_IOU."""
    size = box[2:] - box[:2]
    for _ in range(MAX_BACKGROUND_ATTEMPTS):
        offset = rng.uniform(-1, 1, size=2) * size
        shifted = box + np.concatenate([offset, offset])
        if shifted[0] < 0 or shifted[1] < 0 or shifted[2] > width or shifted[3] > height:
            continue
        best = box_iou(torch.from_numpy(shifted)[None], torch.from_numpy(boxes)).max().item()
        if NEAR_MISS_IOU[0] <= best < NEAR_MISS_IOU[1]:
            return shifted
    return None
